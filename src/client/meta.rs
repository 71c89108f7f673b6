//! What a transfer is (a file, a folder as tar, or a bare stream), told to
//! the receiver in the first sealed record when encrypted, or in ordinary
//! Piping headers (`Content-Type`, `Content-Disposition`,
//! `Content-Length`) when not, so curl users see sensible headers too.

use serde::{Deserialize, Serialize};

/// The media type of a folder or several files.
pub const TAR_TYPE: &str = "application/x-tar";
/// The largest metadata record a receiver accepts.
pub const MAX_META: usize = 64 * 1024;

/// What the bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One file: written under its name.
    File,
    /// A tar archive of files and folders: unpacked.
    Tar,
    /// A stream with no name (stdin): written to stdout.
    Stream,
}

/// The description of a transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub kind: Kind,
    /// File name (no directories) for `file`; the folder's name for `tar`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Bytes of payload, when known in advance (for `tar`, an estimate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Unix permission bits of a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Modification time of a file, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
}

impl Meta {
    pub fn stream() -> Self {
        Self {
            kind: Kind::Stream,
            name: None,
            size: None,
            mode: None,
            mtime: None,
        }
    }

    /// The headers of a plain (unencrypted) upload.
    pub fn content_type(&self) -> Option<String> {
        match self.kind {
            Kind::Tar => Some(TAR_TYPE.to_owned()),
            _ => None,
        }
    }

    /// `attachment; filename="..."`, with an RFC 8187 form for names
    /// that are not plain ASCII.
    pub fn content_disposition(&self) -> Option<String> {
        let name = self.name.as_deref()?;
        let name = match self.kind {
            Kind::Tar => format!("{name}.tar"),
            _ => name.to_owned(),
        };
        let plain = name
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ');
        Some(if plain {
            format!("attachment; filename=\"{name}\"")
        } else {
            let encoded: String = form_urlencoded::byte_serialize(name.as_bytes())
                .collect::<String>()
                .replace('+', "%20");
            format!("attachment; filename*=UTF-8''{encoded}")
        })
    }

    /// Reads what a plain upload's headers say.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let get = |h: http::header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
        let tar = get(http::header::CONTENT_TYPE).is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case(TAR_TYPE))
        });
        let size = get(http::header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
        let name = get(http::header::CONTENT_DISPOSITION).and_then(disposition_name);
        let kind = match (tar, &name) {
            (true, _) => Kind::Tar,
            (false, Some(_)) => Kind::File,
            (false, None) => Kind::Stream,
        };
        let name = match kind {
            Kind::Tar => name.map(|n| n.strip_suffix(".tar").map(str::to_owned).unwrap_or(n)),
            _ => name,
        };
        Self {
            kind,
            name,
            size,
            mode: None,
            mtime: None,
        }
    }
}

/// The file name in a `Content-Disposition` value (`filename*` first).
pub fn disposition_name(value: &str) -> Option<String> {
    let params = value.split(';').skip(1).filter_map(|p| p.split_once('='));
    let mut plain = None;
    for (key, val) in params {
        let (key, val) = (key.trim().to_ascii_lowercase(), val.trim());
        if key == "filename*" {
            let encoded = val.split_once("''").map(|(_, e)| e)?;
            let bytes: Vec<u8> = percent_decode(encoded)?;
            return String::from_utf8(bytes).ok();
        }
        if key == "filename" {
            plain = Some(val.trim_matches('"').to_owned());
        }
    }
    plain
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            let hex = std::str::from_utf8(&hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

/// A name from the other side, reduced to one safe path component:
/// `None` for anything that is not a plain file name.
pub fn safe_file_name(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255;
    ok.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> Meta {
        Meta {
            kind: Kind::File,
            name: Some(name.into()),
            ..Meta::stream()
        }
    }

    #[test]
    fn disposition_round_trip() {
        for name in ["a.iso", "with space.txt", "naïve €.txt", "quote\".txt"] {
            let cd = file(name).content_disposition().unwrap();
            assert_eq!(disposition_name(&cd).as_deref(), Some(name), "{cd}");
        }
    }

    #[test]
    fn headers_to_meta() {
        let mut h = http::HeaderMap::new();
        assert_eq!(Meta::from_headers(&h).kind, Kind::Stream);
        h.insert("content-type", TAR_TYPE.parse().unwrap());
        h.insert(
            "content-disposition",
            "attachment; filename=\"dir.tar\"".parse().unwrap(),
        );
        let m = Meta::from_headers(&h);
        assert_eq!((m.kind, m.name.as_deref()), (Kind::Tar, Some("dir")));
    }

    #[test]
    fn unsafe_names() {
        for bad in ["", ".", "..", "../x", "a/b", "a\\b"] {
            assert_eq!(safe_file_name(bad), None, "{bad}");
        }
        assert_eq!(safe_file_name("ok.txt"), Some("ok.txt"));
    }

    #[test]
    fn json_shape() {
        let m = file("x");
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"kind":"file","name":"x"}"#
        );
    }
}

//! Folders and several files as one tar stream: built while it is sent
//! (no temporary file) and unpacked while it arrives, into a staging folder
//! that is moved into place only when the whole archive checked out.
//!
//! Unpacking trusts nothing: an entry whose path is absolute or climbs with
//! `..` is an error (never silently skipped), writing through a symlink
//! that points outside is refused by the `tar` crate's `unpack_in`, hard
//! links must stay inside, and devices or FIFOs are refused.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use rand::Rng;

use super::ClientError;

/// The prefix of staging folders and partial files; left only if the
/// process is killed, and then clearly named.
pub const PARTIAL: &str = ".tubes-partial-";

/// The name an input is stored under: its last component.
fn entry_name(path: &Path) -> Result<PathBuf, ClientError> {
    let canonical = path
        .canonicalize()
        .map_err(|e| ClientError::local(format!("cannot read {}", path.display()), e))?;
    let name = match path.file_name() {
        Some(n) => PathBuf::from(n),
        None => canonical
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("root")),
    };
    Ok(name)
}

/// Bytes of file content under `paths` (symlinks not followed): the
/// estimate the progress bar shows for an archive.
pub fn payload_size(paths: &[PathBuf]) -> u64 {
    fn walk(path: &Path) -> u64 {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => fs::read_dir(path)
                .map(|rd| rd.flatten().map(|e| walk(&e.path())).sum())
                .unwrap_or(0),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        }
    }
    paths.iter().map(|p| walk(p)).sum()
}

/// Writes a tar archive of `paths` (each stored under its own name, folders
/// with everything in them, symlinks as links) to `out`.
pub fn pack(paths: &[PathBuf], out: impl Write) -> io::Result<()> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    for path in paths {
        let name = entry_name(path).map_err(|e| io::Error::other(e.to_string()))?;
        let meta = fs::symlink_metadata(path)?;
        if meta.is_dir() {
            builder.append_dir_all(&name, path)?;
        } else {
            builder.append_path_with_name(path, &name)?;
        }
    }
    builder.into_inner()?.flush()
}

/// The path of an entry if it stays inside the output folder.
fn inside(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

fn hostile(path: &Path) -> ClientError {
    ClientError::HostileEntry(path.display().to_string())
}

/// Unpacks the archive read from `input` into `staging` (which must exist
/// and be empty).
fn unpack_into(input: impl Read, staging: &Path) -> Result<(), ClientError> {
    let bad = |e: io::Error| ClientError::local("cannot unpack the archive", e);
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    // Folders get their final mode and mtime after their contents exist.
    let mut folders = Vec::new();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw = entry.path().map_err(bad)?.into_owned();
        let rel = inside(&raw).ok_or_else(|| hostile(&raw))?;
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::Directory
            | tar::EntryType::Symlink => {}
            tar::EntryType::Link => {
                let target = entry.link_name().map_err(bad)?.unwrap_or_default();
                if inside(&target).is_none() {
                    return Err(hostile(&raw));
                }
            }
            other => {
                return Err(ClientError::Local(format!(
                    "refused archive entry {:?}: unsupported type {other:?}",
                    raw.display().to_string()
                )))
            }
        }
        let mode = entry.header().mode().ok();
        let mtime = entry.header().mtime().ok();
        if !entry.unpack_in(staging).map_err(bad)? {
            return Err(hostile(&raw));
        }
        if kind.is_dir() {
            let path = staging.join(&rel);
            // Keep the folder writable until its contents are in.
            set_mode(&path, mode.map(|m| m | 0o700));
            folders.push((path, mode, mtime));
        }
    }
    for (path, mode, mtime) in folders.into_iter().rev() {
        set_mode(&path, mode);
        if let Some(t) = mtime {
            let t = filetime::FileTime::from_unix_time(t as i64, 0);
            let _ = filetime::set_file_mtime(&path, t);
        }
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: Option<u32>) {
    use std::os::unix::fs::PermissionsExt;
    if let Some(m) = mode {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(m & 0o7777));
    }
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: Option<u32>) {}

/// A fresh, clearly named staging folder or file name inside `dir`.
pub fn partial_path(dir: &Path) -> PathBuf {
    let tag: u64 = rand::thread_rng().gen();
    dir.join(format!("{PARTIAL}{tag:016x}"))
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Unpacks an archive into `out` (created if missing). Nothing appears in
/// `out` unless the whole archive arrived and checked out; an existing
/// entry is replaced only with `force`. Returns the top-level names.
pub fn unpack(input: impl Read, out: &Path, force: bool) -> Result<Vec<String>, ClientError> {
    fs::create_dir_all(out)
        .map_err(|e| ClientError::local(format!("cannot create {}", out.display()), e))?;
    let staging = partial_path(out);
    fs::create_dir(&staging)
        .map_err(|e| ClientError::local(format!("cannot create {}", staging.display()), e))?;
    let result = unpack_into(input, &staging).and_then(|()| move_into_place(&staging, out, force));
    let _ = fs::remove_dir_all(&staging);
    result
}

fn move_into_place(staging: &Path, out: &Path, force: bool) -> Result<Vec<String>, ClientError> {
    let local = |what: &Path, e: io::Error| {
        ClientError::local(format!("cannot move {}", what.display()), e)
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(staging).map_err(|e| local(staging, e))? {
        let entry = entry.map_err(|e| local(staging, e))?;
        names.push(entry.file_name());
    }
    names.sort();
    if !force {
        if let Some(taken) = names
            .iter()
            .find(|n| fs::symlink_metadata(out.join(n)).is_ok())
        {
            return Err(ClientError::Local(format!(
                "{} already exists (use --force to replace it)",
                out.join(taken).display()
            )));
        }
    }
    for name in &names {
        let target = out.join(name);
        remove_any(&target).map_err(|e| local(&target, e))?;
        fs::rename(staging.join(name), &target).map_err(|e| local(&target, e))?;
    }
    Ok(names
        .into_iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tubes-archive-{:x}", rand::random::<u64>()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn tar_with(path: &str, data: &[u8]) -> Vec<u8> {
        // Write the name straight into the header: the tar crate's own
        // setters refuse `..`, as a hostile sender would not.
        let mut header = tar::Header::new_gnu();
        let name = path.as_bytes();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&header, data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn climbing_entries_are_refused_and_leave_nothing() {
        for evil in ["../x", "a/../../x", "/etc/x"] {
            let out = tmp();
            let err = unpack(&tar_with(evil, b"boom")[..], &out, false).unwrap_err();
            assert!(matches!(err, ClientError::HostileEntry(_)), "{evil}: {err}");
            assert_eq!(fs::read_dir(&out).unwrap().count(), 0, "{evil}");
            fs::remove_dir_all(out).unwrap();
        }
    }

    #[test]
    fn round_trip_keeps_tree_links_and_modes() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let src = tmp();
        let root = src.join("tree");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::create_dir_all(root.join("empty")).unwrap();
        fs::write(root.join("a/b/f.txt"), b"hello").unwrap();
        fs::write(root.join("odd name ü.bin"), b"x").unwrap();
        fs::set_permissions(
            root.join("odd name ü.bin"),
            fs::Permissions::from_mode(0o751),
        )
        .unwrap();
        symlink("a/b/f.txt", root.join("link")).unwrap();
        let mut bytes = Vec::new();
        pack(std::slice::from_ref(&root), &mut bytes).unwrap();
        let out = tmp();
        let names = unpack(&bytes[..], &out, false).unwrap();
        assert_eq!(names, vec!["tree"]);
        let got = out.join("tree");
        assert_eq!(fs::read(got.join("a/b/f.txt")).unwrap(), b"hello");
        assert!(got.join("empty").is_dir());
        assert_eq!(
            fs::read_link(got.join("link")).unwrap(),
            Path::new("a/b/f.txt")
        );
        let mode = fs::metadata(got.join("odd name ü.bin"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o751);
        // A second unpack does not overwrite without force.
        assert!(unpack(&bytes[..], &out, false).is_err());
        assert!(unpack(&bytes[..], &out, true).is_ok());
        fs::remove_dir_all(src).unwrap();
        fs::remove_dir_all(out).unwrap();
    }

    #[test]
    fn writing_through_an_outside_symlink_is_refused() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "esc", "/tmp").unwrap();
        let mut f = tar::Header::new_gnu();
        f.set_size(1);
        f.set_mode(0o644);
        b.append_data(&mut f, "esc/pwned-by-tubes-test", &b"x"[..])
            .unwrap();
        let bytes = b.into_inner().unwrap();
        let out = tmp();
        assert!(unpack(&bytes[..], &out, false).is_err());
        assert!(!Path::new("/tmp/pwned-by-tubes-test").exists());
        fs::remove_dir_all(out).unwrap();
    }
}

//! Transfer codes: `4821-amber-lunar-velvet`. The number (the nameplate)
//! picks the relay paths and is public; the whole code is the password of
//! the key exchange, so the relay, which sees only the nameplate, cannot
//! test guesses offline. Three words from 1,024 give 30 bits, and each
//! wrong guess costs an attacker a live exchange that the users see fail.

use rand::Rng;

use super::ClientError;

/// The word list, one word per line (our own list, 1,024 words, no two
/// sharing their first four letters).
const WORDS: &str = include_str!("../../assets/words.txt");
/// Words in a generated code.
pub const CODE_WORDS: usize = 3;
/// Nameplates are drawn from this range.
const NAMEPLATES: std::ops::RangeInclusive<u32> = 1000..=9999;

/// A parsed or generated code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Code {
    nameplate: Option<u32>,
    text: String,
}

fn words() -> impl Iterator<Item = &'static str> {
    WORDS.lines().map(str::trim).filter(|w| !w.is_empty())
}

fn random_words(rng: &mut impl Rng, count: usize) -> Vec<&'static str> {
    let list: Vec<&str> = words().collect();
    (0..count)
        .map(|_| list[rng.gen_range(0..list.len())])
        .collect()
}

/// `count` random words joined by `-` (a passphrase, a path).
pub fn random_phrase(count: usize) -> String {
    random_words(&mut rand::thread_rng(), count).join("-")
}

impl Code {
    /// A fresh code with a nameplate, for `tubes send` without `--path`.
    pub fn generate() -> Self {
        let mut rng = rand::thread_rng();
        let nameplate = rng.gen_range(NAMEPLATES);
        let words = random_words(&mut rng, CODE_WORDS).join("-");
        Self {
            nameplate: Some(nameplate),
            text: format!("{nameplate}-{words}"),
        }
    }

    /// A fresh secret without a nameplate, for `--encrypt` on a given path.
    pub fn generate_secret() -> Self {
        let words = random_words(&mut rand::thread_rng(), CODE_WORDS).join("-");
        Self {
            nameplate: None,
            text: words,
        }
    }

    /// Parses what a user typed: case and spaces do not matter, words may
    /// be separated by `-` or spaces. A leading number is a nameplate.
    pub fn parse(input: &str) -> Result<Self, ClientError> {
        let parts: Vec<String> = input
            .split(|c: char| c == '-' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        let bad = || {
            ClientError::Usage(format!(
                "{input:?} is not a code like 4821-amber-lunar-velvet"
            ))
        };
        let (nameplate, rest) = match parts.split_first() {
            Some((first, rest)) if first.bytes().all(|b| b.is_ascii_digit()) => {
                (Some(first.parse::<u32>().map_err(|_| bad())?), rest)
            }
            _ => (None, &parts[..]),
        };
        if rest.len() < 2
            || !rest
                .iter()
                .all(|w| w.bytes().all(|b| b.is_ascii_lowercase()))
        {
            return Err(bad());
        }
        let text = match nameplate {
            Some(n) => format!("{n}-{}", rest.join("-")),
            None => rest.join("-"),
        };
        Ok(Self { nameplate, text })
    }

    /// True if `input` looks like a code with a nameplate (rather than a
    /// path): digits, then at least two words.
    pub fn looks_like_code(input: &str) -> bool {
        Self::parse(input).is_ok_and(|c| c.nameplate.is_some())
    }

    /// The code as the other side types it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The relay path of the data, when the code has a nameplate.
    pub fn data_path(&self) -> Option<String> {
        self.nameplate.map(|n| format!("tubes-{n}"))
    }
}

/// The three paths of an encrypted transfer: the two key-exchange messages
/// beside the data path.
#[derive(Clone, Debug)]
pub struct Rendezvous {
    pub data: String,
    pub sender_share: String,
    pub receiver_share: String,
}

impl Rendezvous {
    pub fn new(data: &str) -> Self {
        let data = data.trim_start_matches('/').to_owned();
        Self {
            sender_share: format!("{data}/key-s"),
            receiver_share: format!("{data}/key-r"),
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_list_is_sound() {
        let list: Vec<&str> = words().collect();
        assert_eq!(list.len(), 1024);
        let mut prefixes: Vec<&str> = list.iter().map(|w| &w[..w.len().min(4)]).collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        assert_eq!(prefixes.len(), 1024, "two words share a 4-letter prefix");
    }

    #[test]
    fn generated_codes_parse_back() {
        for _ in 0..100 {
            let code = Code::generate();
            assert!(Code::looks_like_code(code.as_str()));
            assert_eq!(Code::parse(code.as_str()).unwrap(), code);
            let secret = Code::generate_secret();
            assert_eq!(Code::parse(secret.as_str()).unwrap(), secret);
            assert_eq!(secret.data_path(), None);
        }
    }

    #[test]
    fn typing_is_forgiving() {
        let c = Code::parse(" 4821 Amber-lunar  VELVET ").unwrap();
        assert_eq!(c.as_str(), "4821-amber-lunar-velvet");
        assert_eq!(c.data_path().as_deref(), Some("tubes-4821"));
    }

    #[test]
    fn paths_are_not_codes() {
        for p in [
            "abc",
            "my/path",
            "4821",
            "4821-x",
            "a-b-c.txt",
            "4821-amber-l2",
        ] {
            assert!(!Code::looks_like_code(p), "{p}");
        }
        assert!(Code::parse("amber").is_err());
    }
}

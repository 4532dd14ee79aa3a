//! PII and secret detection. Each detector is a regex that finds candidates and, where the
//! format has one, a checksum or range check that confirms them, so a random run of digits
//! is not a card number (Luhn), an IBAN (mod 97) or an SSN (issued ranges only).
//!
//! Detectors run in a fixed priority order (secrets first: they may contain digits or `@`);
//! a later match that overlaps an earlier one is dropped, so every character belongs to at
//! most one finding.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::sync::LazyLock;

use regex::Regex;
use serde::Deserialize;

/// What kind of value was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Email,
    Phone,
    Card,
    Iban,
    Ssn,
    Ip,
    Secret,
}

impl Category {
    pub const ALL: [Category; 7] = [
        Category::Email,
        Category::Phone,
        Category::Card,
        Category::Iban,
        Category::Ssn,
        Category::Ip,
        Category::Secret,
    ];

    /// The config key and the name in errors and audit rows.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Email => "email",
            Category::Phone => "phone",
            Category::Card => "card",
            Category::Iban => "iban",
            Category::Ssn => "ssn",
            Category::Ip => "ip",
            Category::Secret => "secret",
        }
    }

    /// The placeholder label: `[EMAIL]`, `[EMAIL_1]`.
    pub fn label(self) -> &'static str {
        match self {
            Category::Email => "EMAIL",
            Category::Phone => "PHONE",
            Category::Card => "CARD",
            Category::Iban => "IBAN",
            Category::Ssn => "SSN",
            Category::Ip => "IP",
            Category::Secret => "SECRET",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Category::Email => "an e-mail address",
            Category::Phone => "a phone number",
            Category::Card => "a payment card number",
            Category::Iban => "an IBAN",
            Category::Ssn => "a US social security number",
            Category::Ip => "an IP address",
            Category::Secret => "a secret (API key, token or private key)",
        }
    }
}

/// One detected value: `text[start..end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub start: usize,
    pub end: usize,
    pub category: Category,
    /// Which detector (docs/security.md lists them).
    pub detector: &'static str,
}

/// Confirms a regex candidate; gets the whole text for context checks.
type Check = fn(text: &str, start: usize, end: usize) -> bool;

struct Detector {
    id: &'static str,
    category: Category,
    regex: Regex,
    check: Option<Check>,
}

/// The built-in detectors, in priority order.
const DETECTORS: &[(&str, Category, &str, Option<Check>)] = &[
    (
        "private_key",
        Category::Secret,
        r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?s:.*?)(?:-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|\z)",
        None,
    ),
    (
        "bearer_token",
        Category::Secret,
        r"\b[Bb]earer[ \t]+[A-Za-z0-9._~+/=-]{16,}",
        None,
    ),
    (
        "jwt",
        Category::Secret,
        r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
        None,
    ),
    // OpenAI (sk-..., sk-proj-...) and Anthropic (sk-ant-...) keys.
    (
        "sk_key",
        Category::Secret,
        r"\bsk-[A-Za-z0-9_-]{20,}",
        Some(check_random),
    ),
    (
        "aws_access_key",
        Category::Secret,
        r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b",
        None,
    ),
    (
        "github_token",
        Category::Secret,
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b",
        None,
    ),
    (
        "slack_token",
        Category::Secret,
        r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
        None,
    ),
    (
        "google_api_key",
        Category::Secret,
        r"\bAIza[0-9A-Za-z_-]{35}\b",
        None,
    ),
    (
        "stripe_key",
        Category::Secret,
        r"\b(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{16,}\b",
        None,
    ),
    (
        "iban",
        Category::Iban,
        r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?",
        Some(check_iban),
    ),
    // 13-19 digits: contiguous, in groups of four (the last one shorter), or Amex's 4-6-5.
    (
        "card",
        Category::Card,
        r"(?:\d{4}[ -]?){3}\d{1,7}|\d{4}[ -]?\d{6}[ -]?\d{5}",
        Some(check_card),
    ),
    (
        "ssn",
        Category::Ssn,
        r"\d{3}[- ]\d{2}[- ]\d{4}",
        Some(check_ssn),
    ),
    (
        "email",
        Category::Email,
        r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}",
        None,
    ),
    (
        "ipv4",
        Category::Ip,
        r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}",
        Some(check_ipv4),
    ),
    (
        "ipv6",
        Category::Ip,
        r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4})",
        Some(check_ipv6),
    ),
    // International: a leading +, 8-15 digits in all.
    (
        "phone_intl",
        Category::Phone,
        r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,5}",
        Some(check_phone_intl),
    ),
    // North American: (212) 555-0142, 212-555-0142, 212.555.0142.
    (
        "phone_nanp",
        Category::Phone,
        r"(?:\(\d{3}\)[ ]?|\d{3}[ .-])\d{3}[ .-]\d{4}",
        Some(check_phone_nanp),
    ),
];

static SCANNER: LazyLock<Vec<Detector>> = LazyLock::new(|| {
    DETECTORS
        .iter()
        .filter_map(|(id, category, pattern, check)| {
            // Built-in patterns are covered by tests; one that failed to compile would be
            // a build defect, and dropping it is the only non-panicking choice.
            // ASCII digits and word boundaries: the checks below count ASCII digits, and an
            // ASCII `\b` keeps the fast DFA engines usable on any text.
            let pattern = pattern.replace(r"\b", r"(?-u:\b)").replace(r"\d", "[0-9]");
            let regex = Regex::new(&pattern).ok()?;
            Some(Detector {
                id,
                category: *category,
                regex,
                check: *check,
            })
        })
        .collect()
});

/// Every built-in detector compiled (checked at start-up).
pub fn detectors_ok() -> bool {
    SCANNER.len() == DETECTORS.len()
}

/// Finds the values of the wanted categories in `text`, sorted by position, not
/// overlapping.
pub fn scan(text: &str, wanted: impl Fn(Category) -> bool) -> Vec<Finding> {
    // Accepted spans by start; they never overlap.
    let mut spans: BTreeMap<usize, Finding> = BTreeMap::new();
    for detector in SCANNER.iter().filter(|d| wanted(d.category)) {
        // A cheap pre-check skips most detectors on most text.
        if !may_contain(detector.id, text) {
            continue;
        }
        let mut at = 0;
        while let Some(m) = detector.regex.find_at(text, at) {
            let (start, end) = (m.start(), m.end());
            if let Some(check) = detector.check {
                if !check(text, start, end) {
                    // A rejected candidate must not hide a real value that starts inside
                    // it ("1234 4111 1111 1111 1111"): search again from its next char.
                    at = start + text[start..].chars().next().map_or(1, char::len_utf8);
                    continue;
                }
            }
            at = end.max(start + 1);
            // Only the nearest span starting before `end` can overlap (spans are disjoint).
            let overlaps = spans
                .range(..end)
                .next_back()
                .is_some_and(|(_, f)| f.end > start);
            if !overlaps {
                spans.insert(
                    start,
                    Finding {
                        start,
                        end,
                        category: detector.category,
                        detector: detector.id,
                    },
                );
            }
        }
    }
    spans.into_values().collect()
}

fn may_contain(detector: &str, text: &str) -> bool {
    match detector {
        "private_key" => text.contains("PRIVATE KEY"),
        "email" => text.contains('@'),
        "ipv6" => text.contains(':'),
        "phone_intl" => text.contains('+'),
        "sk_key" => text.contains("sk-"),
        "jwt" => text.contains("eyJ"),
        _ => true,
    }
}

/// Numbers are bounded by non-digits, not by word boundaries: `4111111111111111mail`
/// (text blocks joined without a space) still holds a card number.
fn digit_bounded(text: &str, start: usize, end: usize) -> bool {
    let b = text.as_bytes();
    (start == 0 || !b[start - 1].is_ascii_digit()) && b.get(end).is_none_or(|c| !c.is_ascii_digit())
}

fn digits(s: &str) -> impl Iterator<Item = u32> + '_ {
    s.chars().filter_map(|c| c.to_digit(10))
}

/// Luhn checksum over 13-19 digits, with an issuer prefix (2-6: Mastercard 2-series,
/// Amex/Diners/JCB, Visa, Mastercard, Discover/UnionPay/Maestro).
fn check_card(text: &str, start: usize, end: usize) -> bool {
    if !digit_bounded(text, start, end) {
        return false;
    }
    let d: Vec<u32> = digits(&text[start..end]).collect();
    if !(13..=19).contains(&d.len()) || !(2..=6).contains(&d[0]) {
        return false;
    }
    luhn(&d)
}

pub fn luhn(d: &[u32]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 {
                    y - 9
                } else {
                    y
                }
            } else {
                x
            }
        })
        .sum();
    matches!(sum % 10, 0)
}

/// ISO 13616: 15-34 characters, and the number (country and check digits moved to the
/// end, letters as 10..35) is 1 modulo 97.
fn check_iban(text: &str, start: usize, end: usize) -> bool {
    let s: Vec<char> = text[start..end].chars().filter(|c| *c != ' ').collect();
    if !(15..=34).contains(&s.len()) {
        return false;
    }
    iban_mod97(&s) == Some(1)
}

pub fn iban_mod97(s: &[char]) -> Option<u32> {
    let mut rem: u32 = 0;
    for c in s[4..].iter().chain(&s[..4]) {
        let v = c.to_digit(36)?;
        rem = if v < 10 {
            (rem * 10 + v) % 97
        } else {
            (rem * 100 + v) % 97
        };
    }
    Some(rem)
}

/// Issued SSNs: area not 000, 666 or 900-999; group not 00; serial not 0000; not one of
/// the numbers published in advertising.
fn check_ssn(text: &str, start: usize, end: usize) -> bool {
    if !digit_bounded(text, start, end) {
        return false;
    }
    let s = &text[start..end];
    let d: Vec<u32> = digits(s).collect();
    if d.len() != 9 || s.len() != 11 {
        return false;
    }
    let area = d[0] * 100 + d[1] * 10 + d[2];
    let group = d[3] * 10 + d[4];
    let serial = d[5] * 1000 + d[6] * 100 + d[7] * 10 + d[8];
    // One separator kind: "123-45 6789" is not how SSNs are written.
    let b = s.as_bytes();
    if b[3] != b[6] {
        return false;
    }
    let known_fakes = [(78, 5, 1120), (219, 9, 9999)];
    area != 0
        && area != 666
        && area < 900
        && group != 0
        && serial != 0
        && !known_fakes.contains(&(area, group, serial))
}

/// Not part of a longer dotted run (a version number like 1.2.3.4.5).
fn check_ipv4(text: &str, start: usize, end: usize) -> bool {
    if !digit_bounded(text, start, end) {
        return false;
    }
    let b = text.as_bytes();
    let before = start >= 2 && b[start - 1] == b'.' && b[start - 2].is_ascii_digit();
    let after = end + 1 < b.len() && b[end] == b'.' && b[end + 1].is_ascii_digit();
    !before && !after
}

/// A real IPv6 address standing alone (not `std::vec` or a time of day).
fn check_ipv6(text: &str, start: usize, end: usize) -> bool {
    let b = text.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    if start > 0 && word(b[start - 1]) {
        return false;
    }
    if end < b.len()
        && (word(b[end]) || b[end] == b'.' && b.get(end + 1).is_some_and(u8::is_ascii_digit))
    {
        return false;
    }
    let s = &text[start..end];
    s.bytes().any(|c| c.is_ascii_hexdigit()) && s.parse::<Ipv6Addr>().is_ok()
}

/// Generated keys mix letters and digits; `sk-learn-compatible-estimator` does not.
fn check_random(text: &str, start: usize, end: usize) -> bool {
    let s = &text[start..end];
    s.bytes().any(|c| c.is_ascii_digit()) && s.bytes().skip(3).any(|c| c.is_ascii_alphabetic())
}

fn check_phone_intl(text: &str, start: usize, end: usize) -> bool {
    if !digit_bounded(text, start, end) {
        return false;
    }
    let n = digits(&text[start..end]).count();
    (8..=15).contains(&n)
}

/// NANP: area code and exchange start with 2-9.
fn check_phone_nanp(text: &str, start: usize, end: usize) -> bool {
    if !digit_bounded(text, start, end) {
        return false;
    }
    let d: Vec<u32> = digits(&text[start..end]).collect();
    if start > 0 && text.as_bytes()[start - 1] == b'+' {
        return false;
    }
    d.len() == 10 && d[0] >= 2 && d[3] >= 2
}

impl crate::config::PiiConfig {
    pub fn action(&self, category: Category) -> crate::config::PiiAction {
        match category {
            Category::Email => self.email,
            Category::Phone => self.phone,
            Category::Card => self.card,
            Category::Iban => self.iban,
            Category::Ssn => self.ssn,
            Category::Ip => self.ip,
            Category::Secret => self.secret,
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn found(text: &str) -> Vec<(Category, &str)> {
        scan(text, |_| true)
            .into_iter()
            .map(|f| (f.category, &text[f.start..f.end]))
            .collect()
    }

    #[test]
    fn every_detector_compiles() {
        assert!(detectors_ok());
    }

    #[test]
    fn finds_each_category() {
        use Category::*;
        let cases: &[(&str, Category, &str)] = &[
            ("mail jane.doe+x@example.co.uk now", Email, "jane.doe+x@example.co.uk"),
            ("call +44 20 7946 0958 today", Phone, "+44 20 7946 0958"),
            ("call (212) 555-0142.", Phone, "(212) 555-0142"),
            ("call 212-555-0142", Phone, "212-555-0142"),
            ("card 4111 1111 1111 1111 ok", Card, "4111 1111 1111 1111"),
            ("card 4111-1111-1111-1111", Card, "4111-1111-1111-1111"),
            ("amex 378282246310005", Card, "378282246310005"),
            ("amex 3782 822463 10005", Card, "3782 822463 10005"),
            ("iban DE89 3704 0044 0532 0130 00 thanks", Iban, "DE89 3704 0044 0532 0130 00"),
            ("iban GB82WEST12345698765432.", Iban, "GB82WEST12345698765432"),
            ("ssn 123-45-6789", Ssn, "123-45-6789"),
            ("host 192.168.1.20:8080", Ip, "192.168.1.20"),
            ("v6 2001:db8::8a2e:370:7334 up", Ip, "2001:db8::8a2e:370:7334"),
            ("v6 ::1 loopback", Ip, "::1"),
            ("v6 fe80::1%eth0", Ip, "fe80::1"),
            ("key sk-proj-abcdefghijklmnopqrstuvwxyz012345", Secret, "sk-proj-abcdefghijklmnopqrstuvwxyz012345"),
            ("key sk-ant-api03-AAAAAAAAAAAAAAAAAAAAAAAAAAAA", Secret, "sk-ant-api03-AAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            ("aws AKIAIOSFODNN7EXAMPLE", Secret, "AKIAIOSFODNN7EXAMPLE"),
            ("gh ghp_abcdefghijklmnopqrstuvwxyz0123456789", Secret, "ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
            (
                "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
                Secret,
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            ),
            ("Authorization: Bearer abcdef0123456789abcdef", Secret, "Bearer abcdef0123456789abcdef"),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY----- done",
                Secret,
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
            ),
            ("-----BEGIN PRIVATE KEY-----\nMIIE cut", Secret, "-----BEGIN PRIVATE KEY-----\nMIIE cut"),
        ];
        for (text, category, value) in cases {
            assert_eq!(found(text), vec![(*category, *value)], "{text}");
        }
    }

    #[test]
    fn look_alikes_are_not_pii() {
        for text in [
            // Fails Luhn.
            "order 4111 1111 1111 1112",
            "id 1234567890123456",
            // Luhn-valid but no card issuer starts with 0, 1, 7, 8 or 9.
            "ref 0000 0000 0000 0000",
            "ref 7992739871300000",
            // Too long a digit run to be a card.
            "hash 41111111111111111111111111",
            // Bad IBAN check digits.
            "iban DE88 3704 0044 0532 0130 00",
            // SSN ranges never issued, and the advertising number.
            "ssn 000-12-3456",
            "ssn 666-12-3456",
            "ssn 900-12-3456",
            "ssn 123-00-4567",
            "ssn 123-45-0000",
            "ssn 078-05-1120",
            // Version numbers, times, C++ and Rust paths, MAC addresses.
            "version 1.2.3.4.5",
            "at 12:30:45",
            "std::vector<int> and crate::a::b",
            "mac 00:1a:2b:3c:4d:5e",
            // Numbers that are not NANP phones (area code 1xx) or too short.
            "call 123-555-0142",
            "+1 23",
            "sk-short",
            "use sk-learn-compatible-estimator-api here",
            "plain text with no values at all",
            "dates 2024-10-12 and 2024/10/12",
        ] {
            assert_eq!(found(text), vec![], "{text}");
        }
    }

    #[test]
    fn overlapping_findings_keep_the_first_detector() {
        // The e-mail inside the private key block is part of the secret.
        let text = "-----BEGIN PRIVATE KEY-----\na@b.co\n-----END PRIVATE KEY-----";
        assert_eq!(found(text).len(), 1);
        assert_eq!(found(text)[0].0, Category::Secret);
        let text = "a@example.com 4111111111111111 10.0.0.1";
        let cats: Vec<Category> = found(text).into_iter().map(|f| f.0).collect();
        assert_eq!(cats, vec![Category::Email, Category::Card, Category::Ip]);
    }

    #[test]
    fn values_glued_to_words_are_still_found() {
        assert_eq!(
            found("card 4111111111111111mail me"),
            vec![(Category::Card, "4111111111111111")]
        );
        assert_eq!(
            found("ssn:123-45-6789x"),
            vec![(Category::Ssn, "123-45-6789")]
        );
        assert_eq!(found("ip10.1.2.3ok"), vec![(Category::Ip, "10.1.2.3")]);
        assert_eq!(
            found("to:jane@example.com123"),
            vec![(Category::Email, "jane@example.com")]
        );
        assert_eq!(
            found("tel+44 20 7946 0958ext"),
            vec![(Category::Phone, "+44 20 7946 0958")]
        );
        assert_eq!(
            found("IBAN:DE89370400440532013000."),
            vec![(Category::Iban, "DE89370400440532013000")]
        );
    }

    #[test]
    fn a_rejected_candidate_does_not_hide_a_value_inside_it() {
        assert_eq!(
            found("ref 1234 4111 1111 1111 1111 end"),
            vec![(Category::Card, "4111 1111 1111 1111")]
        );
    }

    #[test]
    fn only_wanted_categories() {
        let text = "a@example.com 4111111111111111";
        let f = scan(text, |c| c == Category::Card);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].category, Category::Card);
    }
}

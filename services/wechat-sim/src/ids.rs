//! The identifiers the simulator hands out, shaped like WeChat's.
//!
//! Openids and phone numbers for codes the simulator has never seen are *derived* from the code,
//! so that a client needs no setup and the same code gives the same user in every run. The hash is
//! FNV-1a feeding SplitMix64, written out here rather than taken from `std`, whose hasher is
//! allowed to change between Rust releases. Secrets (tokens, session keys, minted codes) are random.

use rand::distributions::{Alphanumeric, DistString};
use rand::Rng;

/// The characters of a real openid (`oGZUI0egBJY1zhBYw2KhdUfwVJJE`): base64url.
const OPENID_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Real openids of mini-programs are 28 characters and start with `o`.
pub const OPENID_LEN: usize = 28;

/// The longest `touser` the simulator accepts as an openid it could have issued.
const OPENID_MAX_LEN: usize = 64;

/// The openid a never-seen login code maps to: `o` and 27 base64url characters.
pub fn openid_for_code(code: &str) -> String {
    let mut stream = SplitMix64(fnv1a(b"openid\0", code.as_bytes()));
    let mut openid = String::with_capacity(OPENID_LEN);
    openid.push('o');
    while openid.len() < OPENID_LEN {
        openid.push(OPENID_ALPHABET[(stream.next() >> 58) as usize] as char);
    }
    openid
}

/// The mainland mobile number (`^1[3-9]\d{9}$`) a never-seen phone code maps to.
pub fn phone_for_code(code: &str) -> String {
    let mut stream = SplitMix64(fnv1a(b"phone\0", code.as_bytes()));
    let mut phone = String::with_capacity(11);
    phone.push('1');
    phone.push(char::from(b'3' + (stream.next() % 7) as u8));
    for _ in 0..9 {
        phone.push(char::from(b'0' + (stream.next() % 10) as u8));
    }
    phone
}

/// Whether `touser` could be an openid: not empty, at most 64 characters of base64url. The
/// simulator cannot know every openid of the app (tests choose their own), so it rejects only
/// what WeChat could never have issued: an empty string, a user id, a phone number with `+`.
pub fn is_openid_shaped(s: &str) -> bool {
    !s.is_empty() && s.len() <= OPENID_MAX_LEN && s.bytes().all(|b| OPENID_ALPHABET.contains(&b))
}

/// A login code like `wx.login()` gives: 32 alphanumerics.
pub fn login_code() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 32)
}

/// A phone code like the phone button gives: 64 hex digits.
pub fn phone_code() -> String {
    let mut rng = rand::thread_rng();
    (0..4)
        .map(|_| format!("{:016x}", rng.gen::<u64>()))
        .collect()
}

/// An access token: a short number, `_`, and a long random string, about WeChat's length.
pub fn access_token() -> String {
    let mut rng = rand::thread_rng();
    let prefix: u8 = rng.gen_range(70..90);
    format!("{prefix}_{}", Alphanumeric.sample_string(&mut rng, 130))
}

/// A session key: 16 random bytes in standard base64, as WeChat sends it.
pub fn session_key() -> String {
    base64(&rand::thread_rng().gen::<[u8; 16]>())
}

fn base64(bytes: &[u8]) -> String {
    const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(STD[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn fnv1a(domain: &[u8], data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in domain.iter().chain(data) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_openids_are_stable_and_shaped_like_real_ones() {
        let a = openid_for_code("alice");
        assert_eq!(a, openid_for_code("alice"));
        assert_ne!(a, openid_for_code("bob"));
        assert_eq!(a.len(), OPENID_LEN);
        assert!(a.starts_with('o'));
        assert!(is_openid_shaped(&a));
    }

    #[test]
    fn derived_phones_are_mainland_mobiles() {
        for code in ["a", "b", "c", "0123456789abcdef", ""] {
            let p = phone_for_code(code);
            assert_eq!(p.len(), 11, "{p}");
            assert!(
                p.starts_with('1') && (b'3'..=b'9').contains(&p.as_bytes()[1]),
                "{p}"
            );
            assert!(p.bytes().all(|b| b.is_ascii_digit()), "{p}");
            assert_eq!(p, phone_for_code(code));
        }
    }

    #[test]
    fn openid_shape_rejects_what_wechat_never_issues() {
        assert!(!is_openid_shaped(""));
        assert!(!is_openid_shaped("user 42"));
        assert!(!is_openid_shaped("+8613800138000"));
        assert!(!is_openid_shaped(&"o".repeat(65)));
        assert!(is_openid_shaped("o_test-user_1"));
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(session_key().len(), 24);
    }

    #[test]
    fn secrets_are_random_and_sized_like_wechats() {
        assert_ne!(access_token(), access_token());
        assert_eq!(login_code().len(), 32);
        assert_eq!(phone_code().len(), 64);
    }
}

//! Subscribe-message keyword values: their types, WeChat's limits, and fitting values to them.
//!
//! WeChat rejects a whole subscribe message with `47003` when one keyword value breaks the limit of
//! its type (`data.thing3.value invalid`), and the type is only the prefix of the keyword's name
//! (`thing3` is a `thing`). The notifier uses [`fit`] to shape values before sending and
//! [`validate`] to catch what fitting cannot fix; the simulator uses [`validate`] to answer as
//! WeChat does. Both sides share this one module so that what we send and what the simulator
//! accepts can never drift apart.
//!
//! The limits are the table in `docs/wechat.md` in the repository. Two details it leaves open are decided here:
//! a blank value (empty or whitespace only) and control characters (line breaks, tabs) are
//! invalid for every type, since WeChat answers `47003` for an empty value and none of the types
//! lists such characters among what it accepts.

use std::fmt;

use chrono::{DateTime, FixedOffset, Utc};

pub mod rules;

/// Type of a subscribe-message keyword, named by the prefix of the keyword's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeywordType {
    /// `thing`: up to 20 characters of any kind.
    Thing,
    /// `number`: up to 32 digits, a decimal point allowed.
    Number,
    /// `letter`: up to 32 letters.
    Letter,
    /// `symbol`: up to 5 symbols.
    Symbol,
    /// `character_string`: up to 32 digits, letters and symbols.
    CharacterString,
    /// `time`: a 24-hour time, optionally after a date; ranges with `~`.
    Time,
    /// `date`: a date, optionally with a 24-hour time; ranges with `~`.
    Date,
    /// `amount`: a currency symbol and up to 10 digits, decimals allowed, may end in `元`.
    Amount,
    /// `phone_number`: up to 17 digits and symbols.
    PhoneNumber,
    /// `car_number`: up to 8 characters, the first and last may be Chinese.
    CarNumber,
    /// `name`: up to 10 Chinese characters, or up to 20 letters and symbols.
    Name,
    /// `phrase`: up to 5 Chinese characters.
    Phrase,
    /// `enum`: one of the template's values (not known here: any short value is accepted).
    Enum,
}

/// Name stems of the keyword types. A keyword name is a stem followed by its index, and stems
/// are matched whole (after the index digits are cut off), so `phone_number3` can never be read
/// as a `number` and `phrase1` never as a `phone_number`: the order of this table does not matter.
const STEMS: [(&str, KeywordType); 13] = [
    ("thing", KeywordType::Thing),
    ("number", KeywordType::Number),
    ("letter", KeywordType::Letter),
    ("symbol", KeywordType::Symbol),
    ("character_string", KeywordType::CharacterString),
    ("time", KeywordType::Time),
    ("date", KeywordType::Date),
    ("amount", KeywordType::Amount),
    ("phone_number", KeywordType::PhoneNumber),
    ("car_number", KeywordType::CarNumber),
    ("name", KeywordType::Name),
    ("phrase", KeywordType::Phrase),
    ("enum", KeywordType::Enum),
];

impl KeywordType {
    /// The type of a keyword by its name: `thing1` is [`KeywordType::Thing`],
    /// `character_string2` is [`KeywordType::CharacterString`]. `None` for an unknown stem.
    ///
    /// The index digits after the stem are optional here (`thing` alone is a `thing`).
    pub fn of(keyword: &str) -> Option<KeywordType> {
        let stem = keyword.trim_end_matches(|c: char| c.is_ascii_digit());
        STEMS
            .iter()
            .find(|(name, _)| *name == stem)
            .map(|(_, kind)| *kind)
    }

    /// The stem WeChat uses for this type, e.g. `"character_string"`.
    pub fn stem(self) -> &'static str {
        STEMS
            .iter()
            .find(|(_, kind)| *kind == self)
            .map(|(name, _)| *name)
            .unwrap_or("unknown")
    }
}

impl fmt::Display for KeywordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.stem())
    }
}

/// A keyword value that WeChat would refuse, or a keyword of an unknown type.
///
/// Its `Display` follows WeChat's own `47003` wording (`data.thing3.value invalid`) with the
/// reason appended, so it can be logged or returned as the simulator's `errmsg`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("data.{keyword}.value invalid: {reason}")]
pub struct KeywordError {
    /// The keyword's name, e.g. `thing3`.
    pub keyword: String,
    /// Why the value breaks the limit, in plain words.
    pub reason: String,
}

impl KeywordError {
    fn new(keyword: &str, reason: impl Into<String>) -> Self {
        Self {
            keyword: keyword.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Limits, as named constants so that `validate` and `fit` agree.
const THING_MAX: usize = 20;
const NUMBER_MAX: usize = 32;
const LETTER_MAX: usize = 32;
const SYMBOL_MAX: usize = 5;
const CHARACTER_STRING_MAX: usize = 32;
const AMOUNT_DIGITS_MAX: usize = 10;
const PHONE_NUMBER_MAX: usize = 17;
const CAR_NUMBER_MAX: usize = 8;
const NAME_CHINESE_MAX: usize = 10;
const NAME_OTHER_MAX: usize = 20;
const PHRASE_MAX: usize = 5;
const ENUM_MAX: usize = 20;

/// What [`fit`] puts in place of a value from which nothing valid is left (for the types that
/// accept a symbol). WeChat has no notion of an absent keyword: every keyword must carry a value.
pub const PLACEHOLDER: &str = "-";

/// Whether `c` is a Chinese (CJK ideograph) character, the unit WeChat's limits count in.
pub fn is_chinese(c: char) -> bool {
    rules::in_ranges(&rules::CHINESE_RANGES, c)
}

/// Checks `value` against the limit of `keyword`'s type, counting characters, not bytes.
///
/// The rule of each type is its patterns in [`rules`] and its length limit; the checks before
/// them only give the common failures plainer reasons. An unknown type is an error, since
/// WeChat would refuse the template's data. For `enum` the template's list of values is not
/// known here, so any non-blank value of up to 20 characters is accepted.
pub fn validate(keyword: &str, value: &str) -> Result<(), KeywordError> {
    let kind = KeywordType::of(keyword)
        .ok_or_else(|| KeywordError::new(keyword, "unknown keyword type"))?;
    let err = |reason: String| Err(KeywordError::new(keyword, reason));

    if value.trim().is_empty() {
        return err("value is empty".into());
    }
    if value.chars().any(char::is_control) {
        return err("value contains a control character".into());
    }
    let len = value.chars().count();
    if let Some(max) = kind.max_chars().filter(|&max| len > max) {
        return err(format!(
            "{len} characters, at most {max} allowed for {kind}"
        ));
    }
    if !rules::matches(kind, value) {
        return err(kind.rule().into());
    }
    Ok(())
}

impl KeywordType {
    /// Every keyword type.
    pub fn all() -> impl Iterator<Item = KeywordType> {
        STEMS.iter().map(|(_, kind)| *kind)
    }

    /// The most characters a value may have; `None` where the pattern bounds it (`time`,
    /// `date`, `amount`). A `name` with Chinese in it is held to 10 by its pattern.
    pub fn max_chars(self) -> Option<usize> {
        match self {
            KeywordType::Thing => Some(THING_MAX),
            KeywordType::Number => Some(NUMBER_MAX),
            KeywordType::Letter => Some(LETTER_MAX),
            KeywordType::Symbol => Some(SYMBOL_MAX),
            KeywordType::CharacterString => Some(CHARACTER_STRING_MAX),
            KeywordType::PhoneNumber => Some(PHONE_NUMBER_MAX),
            KeywordType::CarNumber => Some(CAR_NUMBER_MAX),
            KeywordType::Name => Some(NAME_OTHER_MAX),
            KeywordType::Phrase => Some(PHRASE_MAX),
            KeywordType::Enum => Some(ENUM_MAX),
            KeywordType::Time | KeywordType::Date | KeywordType::Amount => None,
        }
    }

    /// The patterns every value of this type matches (see [`rules`]).
    pub fn patterns(self) -> Vec<String> {
        rules::patterns(self)
    }

    /// The rule in plain words, the reason given when a value breaks it.
    pub fn rule(self) -> &'static str {
        match self {
            KeywordType::Thing | KeywordType::Enum => "not a plain text value",
            KeywordType::Number => "not a number (digits with at most one decimal point)",
            KeywordType::Letter => "only letters allowed",
            KeywordType::Symbol => "only symbols allowed",
            KeywordType::CharacterString => "only digits, letters and symbols allowed",
            KeywordType::Time => "not a 24-hour time such as 15:01 or 2019年10月1日 15:01",
            KeywordType::Date => "not a date such as 2019年10月1日 or 2019年10月1日 15:01",
            KeywordType::Amount => "not an amount such as ¥100.50 or 100元 (at most 10 digits)",
            KeywordType::PhoneNumber => "only digits and symbols allowed",
            KeywordType::CarNumber => "only letters and digits, Chinese only first or last",
            KeywordType::Name => "at most 10 characters when it holds Chinese",
            KeywordType::Phrase => "only Chinese characters allowed",
        }
    }
}

/// Validates every keyword of a message's data, returning the first failure in key order.
pub fn validate_data<'a, I>(data: I) -> Result<(), KeywordError>
where
    I: IntoIterator<Item = (&'a String, &'a String)>,
{
    data.into_iter().try_for_each(|(k, v)| validate(k, v))
}

/// Best effort to make `value` valid for `keyword`'s type.
///
/// - `thing`: over 20 characters, the first 19 and `…`;
/// - `name`: cut to 10 characters when it holds Chinese, else to 20;
/// - `phone_number`: keeps digits, `+` and `-`, up to 17;
/// - `character_string`: keeps digits, ASCII letters and symbols, up to 32;
/// - `number`: keeps digits and the first decimal point, up to 32;
/// - `time`, `date` and every other type: returned as is (format times with [`format_time`]).
///
/// Line breaks and other control characters become spaces and the value is trimmed. For
/// `thing`, `name`, `phone_number`, `character_string` and `number` the result always passes
/// [`validate`]: a value from which nothing is left becomes [`PLACEHOLDER`] (`0` for a number).
pub fn fit(keyword: &str, value: &str) -> String {
    let Some(kind) = KeywordType::of(keyword) else {
        return value.to_owned();
    };
    match kind {
        KeywordType::Thing => {
            let clean = clean(value);
            let out = if clean.chars().count() > THING_MAX {
                let mut cut: String = clean.chars().take(THING_MAX - 1).collect();
                cut.push('…');
                cut
            } else {
                clean
            };
            or_placeholder(out)
        }
        KeywordType::Name => {
            let clean = clean(value);
            let max = name_limit(&clean);
            let cut: String = clean.chars().take(max).collect();
            or_placeholder(cut.trim_end().to_owned())
        }
        KeywordType::PhoneNumber => or_placeholder(
            value
                .chars()
                .filter(|c| c.is_ascii_digit() || matches!(c, '+' | '-'))
                .take(PHONE_NUMBER_MAX)
                .collect(),
        ),
        KeywordType::CharacterString => or_placeholder(
            value
                .chars()
                .filter(char::is_ascii_graphic)
                .take(CHARACTER_STRING_MAX)
                .collect(),
        ),
        KeywordType::Number => fit_number(value),
        _ => value.to_owned(),
    }
}

/// Formats a moment for a `time` or `date` keyword, in China's time (UTC+8 all year: China has
/// no daylight saving time), as `2019年10月1日 15:01`, a form WeChat documents for both types.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.with_timezone(&china_offset())
        .format("%Y年%-m月%-d日 %H:%M")
        .to_string()
}

/// UTC+8, China Standard Time.
fn china_offset() -> FixedOffset {
    const CHINA_UTC_OFFSET_SECS: i32 = 8 * 3600;
    FixedOffset::east_opt(CHINA_UTC_OFFSET_SECS).expect("UTC+8 is a valid offset")
}

/// Control characters to spaces, then trimmed.
fn clean(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

fn or_placeholder(s: String) -> String {
    if s.trim().is_empty() {
        PLACEHOLDER.to_owned()
    } else {
        s
    }
}

/// A name with any Chinese character counts as Chinese: "mixed counts as Chinese".
fn name_limit(value: &str) -> usize {
    if value.chars().any(is_chinese) {
        NAME_CHINESE_MAX
    } else {
        NAME_OTHER_MAX
    }
}

fn fit_number(value: &str) -> String {
    let mut out = String::new();
    let mut seen_point = false;
    for c in value.chars() {
        if c.is_ascii_digit() {
            out.push(c);
        } else if c == '.' && !seen_point {
            seen_point = true;
            if out.is_empty() {
                out.push('0');
            }
            out.push('.');
        }
    }
    let mut out: String = out.chars().take(NUMBER_MAX).collect();
    if out.ends_with('.') {
        out.pop();
    }
    if out.is_empty() {
        "0".to_owned()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn ok(k: &str, v: &str) {
        assert_eq!(validate(k, v), Ok(()), "{k}={v:?} should be valid");
    }
    fn bad(k: &str, v: &str) {
        assert!(validate(k, v).is_err(), "{k}={v:?} should be invalid");
    }

    #[test]
    fn type_of_keyword_name() {
        let cases = [
            ("thing1", KeywordType::Thing),
            ("number12", KeywordType::Number),
            ("letter3", KeywordType::Letter),
            ("symbol4", KeywordType::Symbol),
            ("character_string2", KeywordType::CharacterString),
            ("time2", KeywordType::Time),
            ("date5", KeywordType::Date),
            ("amount6", KeywordType::Amount),
            ("phone_number3", KeywordType::PhoneNumber),
            ("car_number8", KeywordType::CarNumber),
            ("name9", KeywordType::Name),
            ("phrase10", KeywordType::Phrase),
            ("enum11", KeywordType::Enum),
        ];
        for (name, kind) in cases {
            assert_eq!(KeywordType::of(name), Some(kind), "{name}");
            assert_eq!(KeywordType::of(&format!("{}1", kind.stem())), Some(kind));
        }
        for unknown in [
            "", "1", "things1", "thing_1", "phone1", "xnumber1", "Thing1",
        ] {
            assert_eq!(KeywordType::of(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn unknown_type_is_an_error() {
        let e = validate("foo1", "x").unwrap_err();
        assert_eq!(e.keyword, "foo1");
        assert!(e.reason.contains("unknown"));
    }

    #[test]
    fn error_display_names_the_field_like_wechat() {
        let e = validate("thing3", &"a".repeat(21)).unwrap_err();
        assert!(
            e.to_string().starts_with("data.thing3.value invalid: "),
            "{e}"
        );
    }

    #[test]
    fn blank_and_control_characters_are_invalid_for_every_type() {
        for (stem, _) in STEMS {
            let k = format!("{stem}1");
            bad(&k, "");
            bad(&k, "   ");
            bad(&k, "a\nb");
        }
    }

    #[test]
    fn thing_counts_characters_not_bytes() {
        ok("thing1", &"客".repeat(20)); // 60 bytes, 20 characters
        bad("thing1", &"客".repeat(21));
        ok("thing1", &"a".repeat(20));
        bad("thing1", &"a".repeat(21));
        ok("thing1", "客户查看了您的简历 abc-123!");
    }

    #[test]
    fn number_limits() {
        ok("number1", "42");
        ok("number1", "3.14");
        ok("number1", &"9".repeat(32));
        bad("number1", &"9".repeat(33));
        bad("number1", "1.2.3");
        bad("number1", ".5");
        bad("number1", "5.");
        bad("number1", "-5");
        bad("number1", "五");
    }

    #[test]
    fn letter_limits() {
        ok("letter1", "abcXYZ");
        ok("letter1", &"a".repeat(32));
        bad("letter1", &"a".repeat(33));
        bad("letter1", "abc1");
        bad("letter1", "ab c");
        bad("letter1", "中");
    }

    #[test]
    fn symbol_limits() {
        ok("symbol1", "!@#$%");
        ok("symbol1", "，。");
        bad("symbol1", "!@#$%^");
        bad("symbol1", "a!");
        bad("symbol1", "中");
    }

    #[test]
    fn character_string_limits() {
        ok("character_string1", "ORDER-2024_0001#A");
        ok("character_string1", &"x".repeat(32));
        bad("character_string1", &"x".repeat(33));
        bad("character_string1", "订单1");
        bad("character_string1", "a b");
    }

    #[test]
    fn time_forms() {
        ok("time2", "15:01");
        ok("time2", "9:05");
        ok("time2", "15:01:59");
        ok("time2", "2019年10月1日 15:01");
        ok("time2", "2019年10月1日15:01");
        ok("time2", "2019-10-01 15:01");
        ok("time2", "15:01~16:30");
        ok("time2", "2019年10月1日 15:01 ~ 2019年10月2日 09:00");
        bad("time2", "2019年10月1日"); // a time needs a clock
        bad("time2", "24:00");
        bad("time2", "15:60");
        bad("time2", "15:1");
        bad("time2", "3pm");
        bad("time2", "15:01~");
        bad("time2", "1:00~2:00~3:00");
        bad("time2", "2019年2月30日 15:01");
    }

    #[test]
    fn date_forms() {
        ok("date1", "2019年10月1日");
        ok("date1", "2019年10月1日 15:01");
        ok("date1", "2019-10-01");
        ok("date1", "2019/10/01");
        ok("date1", "2019年10月1日 ~ 2019年10月7日");
        bad("date1", "15:01"); // a date needs a date
        bad("date1", "2019年13月1日");
        bad("date1", "19年10月1日");
        bad("date1", "2019年10月1");
        bad("date1", "tomorrow");
    }

    #[test]
    fn amount_limits() {
        ok("amount1", "¥100");
        ok("amount1", "￥100.50");
        ok("amount1", "$1234567890");
        ok("amount1", "100元");
        ok("amount1", "¥99.9元");
        bad("amount1", "¥12345678901");
        bad("amount1", "¥¥100");
        bad("amount1", "¥");
        bad("amount1", "100块");
        bad("amount1", "1,000");
    }

    #[test]
    fn phone_number_limits() {
        ok("phone_number1", "+86-0766-66888866"); // 17 characters
        ok("phone_number1", "13800138000");
        bad("phone_number1", "+86-0766-668888661");
        bad("phone_number1", "138abc");
        bad("phone_number1", "一三八");
    }

    #[test]
    fn car_number_limits() {
        ok("car_number1", "粤A8Z8V8");
        ok("car_number1", "粤A1234学");
        ok("car_number1", "AB123456");
        bad("car_number1", "粤A123456学"); // 9
        bad("car_number1", "A粤1234");
        bad("car_number1", "粤A-123");
    }

    #[test]
    fn name_limits() {
        ok("name1", &"张".repeat(10));
        bad("name1", &"张".repeat(11));
        ok("name1", &"a".repeat(20));
        bad("name1", &"a".repeat(21));
        ok("name1", "John O'Neil-Smith");
        // mixed counts as Chinese
        ok("name1", "张John三");
        bad("name1", "张abcdefghij");
    }

    #[test]
    fn phrase_limits() {
        ok("phrase1", "配送中");
        ok("phrase1", "已经取消了");
        bad("phrase1", "已经取消了吗");
        bad("phrase1", "ok");
        bad("phrase1", "好的!");
    }

    #[test]
    fn enum_accepts_short_values() {
        ok("enum1", "已完成");
        ok("enum1", &"a".repeat(20));
        bad("enum1", &"a".repeat(21));
    }

    #[test]
    fn fit_thing_truncates_with_ellipsis() {
        let long = "新客户查看了您的简历并且想要联系您的顾问团队成员";
        let out = fit("thing1", long);
        assert_eq!(out.chars().count(), 20);
        assert!(out.ends_with('…'));
        assert!(long.starts_with(out.trim_end_matches('…')));
        assert_eq!(fit("thing1", "客户查看了您的简历"), "客户查看了您的简历");
        assert_eq!(fit("thing1", &"a".repeat(20)), "a".repeat(20));
        assert_eq!(fit("thing1", ""), PLACEHOLDER);
    }

    #[test]
    fn fit_examples_for_other_types() {
        assert_eq!(fit("name1", &"张".repeat(12)), "张".repeat(10));
        assert_eq!(fit("name1", &"a".repeat(25)), "a".repeat(20));
        assert_eq!(
            fit("phone_number3", "+86 (138) 0013-8000"),
            "+861380013-8000"
        );
        assert_eq!(fit("phone_number3", "无"), PLACEHOLDER);
        assert_eq!(fit("character_string1", "订单 AB-12"), "AB-12");
        assert_eq!(fit("number1", "约 1.5.0 元"), "1.50");
        assert_eq!(fit("number1", ".5"), "0.5");
        assert_eq!(fit("number1", "none"), "0");
        assert_eq!(fit("time2", "whatever"), "whatever");
        assert_eq!(fit("unknown1", "x"), "x");
    }

    #[test]
    fn format_time_is_china_time_and_valid_for_time_and_date() {
        let t = Utc.with_ymd_and_hms(2019, 10, 1, 7, 1, 0).unwrap();
        assert_eq!(format_time(t), "2019年10月1日 15:01");
        // crossing midnight in China
        let t = Utc.with_ymd_and_hms(2024, 12, 31, 16, 5, 0).unwrap();
        assert_eq!(format_time(t), "2025年1月1日 00:05");
        ok("time2", &format_time(t));
        ok("date1", &format_time(t));
    }

    #[test]
    fn validate_data_reports_the_first_bad_keyword() {
        let data = std::collections::BTreeMap::from([
            ("thing1".to_owned(), "ok".to_owned()),
            ("thing3".to_owned(), "x".repeat(21)),
        ]);
        assert_eq!(validate_data(&data).unwrap_err().keyword, "thing3");
    }

    proptest! {
        #[test]
        fn fit_always_validates(
            value in any::<String>(),
            stem in prop::sample::select(vec![
                "thing", "name", "phone_number", "character_string", "number",
            ]),
        ) {
            let keyword = format!("{stem}1");
            let out = fit(&keyword, &value);
            prop_assert_eq!(validate(&keyword, &out), Ok(()), "fit({:?}) = {:?}", value, out);
        }

        #[test]
        fn fit_always_validates_on_chinese_heavy_input(
            value in "[\\u{4e00}-\\u{9fa5}a-zA-Z0-9 .+\\-…！\n]{0,60}",
            stem in prop::sample::select(vec![
                "thing", "name", "phone_number", "character_string", "number",
            ]),
        ) {
            let keyword = format!("{stem}7");
            let out = fit(&keyword, &value);
            prop_assert_eq!(validate(&keyword, &out), Ok(()), "fit({:?}) = {:?}", value, out);
        }

        #[test]
        fn fit_keeps_valid_values_unchanged(value in "[\\u{4e00}-\\u{9fa5}a-z]{1,20}") {
            prop_assert_eq!(validate("thing1", &value), Ok(()));
            prop_assert_eq!(fit("thing1", &value), value);
        }

        #[test]
        fn thing_limit_is_in_characters(n in 1usize..40, c in "[\\u{4e00}-\\u{9fa5}]") {
            let value = c.repeat(n);
            prop_assert_eq!(validate("thing1", &value).is_ok(), n <= THING_MAX);
        }

        #[test]
        fn format_time_always_valid(secs in 0i64..4_102_444_800) {
            let t = DateTime::<Utc>::from_timestamp(secs, 0).unwrap();
            let s = format_time(t);
            prop_assert_eq!(validate("time2", &s), Ok(()));
            prop_assert_eq!(validate("date1", &s), Ok(()));
        }
    }
}

//! `false` turns a setting off: how the config of the lazy filesystem spells `None` for the `Option`
//! settings that are on by default (`disk_bytes = false`, `neighbour_bytes = false`,
//! `background = false`). Any other value is the setting itself, parsed as usual (a table keeps its own
//! errors, unknown keys included).

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::{MapAccessDeserializer, U64Deserializer};
use serde::de::{self, Deserialize, Deserializer, IntoDeserializer, MapAccess, Visitor};

/// `false` → `None`, a value → `Some(value)`.
pub fn deserialize<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_any(OrOff(PhantomData))
}

/// Like [`deserialize`] for a size in bytes, refusing 0 (which once meant "off" or "unbounded").
pub fn deserialize_size<'de, D>(deserializer: D) -> Result<Option<u64>, D::Error>
where
    D: Deserializer<'de>,
{
    match deserialize(deserializer)? {
        Some(0) => Err(de::Error::custom(
            "0 is not a size; write `false` to turn the limit off",
        )),
        size => Ok(size),
    }
}

struct OrOff<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for OrOff<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value, or `false` for off")
    }

    fn visit_bool<E: de::Error>(self, on: bool) -> Result<Self::Value, E> {
        if on {
            Err(E::custom(
                "`true` is not a value: give one, or `false` for off",
            ))
        } else {
            Ok(None)
        }
    }

    /// A format with a null (JSON) may spell off that way too.
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        let deserializer: U64Deserializer<E> = value.into_deserializer();
        T::deserialize(deserializer).map(Some)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        T::deserialize(value.into_deserializer()).map(Some)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map)).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: u32,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        #[serde(default, deserialize_with = "super::deserialize")]
        bytes: Option<u64>,
        #[serde(default, deserialize_with = "super::deserialize_size")]
        cap: Option<u64>,
        #[serde(default, deserialize_with = "super::deserialize")]
        inner: Option<Inner>,
    }

    fn parse(text: &str) -> Result<Settings, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn false_is_off_and_values_are_values() {
        let on = parse("bytes = 5\ncap = 7\n[inner]\na = 1\n").unwrap();
        assert_eq!(
            on,
            Settings {
                bytes: Some(5),
                cap: Some(7),
                inner: Some(Inner { a: 1 })
            }
        );
        let off = parse("bytes = false\ncap = false\ninner = false\n").unwrap();
        assert_eq!(
            off,
            Settings {
                bytes: None,
                cap: None,
                inner: None
            }
        );
    }

    #[test]
    fn mistakes_are_named() {
        let text = |input: &str| parse(input).unwrap_err().to_string();
        assert!(
            text("bytes = true").contains("`false` for off"),
            "{}",
            text("bytes = true")
        );
        assert!(
            text("cap = 0").contains("write `false`"),
            "{}",
            text("cap = 0")
        );
        assert!(text("bytes = -1").contains("-1"), "{}", text("bytes = -1"));
        assert!(text("bytes = \"x\"").contains("`false` for off"));
        let unknown = text("[inner]\na = 1\nb = 2\n");
        assert!(unknown.contains("unknown field `b`"), "{unknown}");
    }
}

//! JSON objects read with duplicate keys refused: serde's maps keep the last value of a key
//! given twice, which hides one of the two from whoever wrote the body.

use serde::de::{Deserialize, Deserializer, Error, MapAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

/// `#[serde(deserialize_with = "unique")]` for a `BTreeMap<String, V>`: an object whose keys are
/// all distinct (a duplicate is an error naming it), and nothing but an object.
pub fn unique<'de, D, V>(d: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    d.deserialize_map(Unique(PhantomData))
}

/// [`unique`] for an optional field (`null` or absent is `None`).
pub fn unique_opt<'de, D, V>(d: D) -> Result<Option<BTreeMap<String, V>>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Wrap<V>(BTreeMap<String, V>);
    impl<'de, V: Deserialize<'de>> Deserialize<'de> for Wrap<V> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            unique(d).map(Wrap)
        }
    }
    Ok(Option::<Wrap<V>>::deserialize(d)?.map(|w| w.0))
}

struct Unique<V>(PhantomData<V>);

impl<'de, V: Deserialize<'de>> Visitor<'de> for Unique<V> {
    type Value = BTreeMap<String, V>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if out.contains_key(key.as_ref()) {
                return Err(A::Error::custom(format_args!("duplicate key `{key}`")));
            }
            let v = map.next_value::<V>()?;
            out.insert(key.into_owned(), v);
        }
        Ok(out)
    }
}

/// `#[serde(deserialize_with = "object_opt")]` for an optional struct that must be sent as a
/// JSON object: serde's derived structs also accept an array of their fields in order, which
/// the API's schema does not allow (and which made `["x", [...]]` a valid request).
pub fn object_opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let raw = Option::<&'de serde_json::value::RawValue>::deserialize(d)?;
    match raw {
        None => Ok(None),
        Some(r) if r.get() == "null" => Ok(None),
        Some(r) if is_object(r.get()) => {
            serde_json::from_str(r.get()).map(Some).map_err(D::Error::custom)
        }
        Some(_) => Err(D::Error::custom("expected an object")),
    }
}

/// Whether JSON text is an object (its first non-blank byte is `{`).
pub fn is_object(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

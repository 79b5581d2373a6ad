//! Values of inputs against their declarations (`min`, `max`, `one_of`): one check for the
//! compiler (defaults, test cases) and the snapshot reader (every account's fields), kept
//! apart from both so neither imports the other.

use super::Scalar;

pub(crate) fn scalar_text(v: &Scalar) -> String {
    match v {
        Scalar::Bool(b) => b.to_string(),
        Scalar::Integer(i) => i.to_string(),
        Scalar::Number(f) => f.to_string(),
        Scalar::String(s) => format!("`{s}`"),
    }
}

/// Why a value breaks an input's `min`/`max`/`one_of`, if it does.
pub fn check_scalar(
    v: &Scalar,
    min: Option<f64>,
    max: Option<f64>,
    one_of: Option<&[Scalar]>,
) -> Option<String> {
    let num = match v {
        Scalar::Integer(i) => Some(*i as f64),
        Scalar::Number(f) => Some(*f),
        _ => None,
    };
    if let (Some(n), Some(lo)) = (num, min)
        && n < lo
    {
        return Some(format!("{} is below the minimum {lo}", scalar_text(v)));
    }
    if let (Some(n), Some(hi)) = (num, max)
        && n > hi
    {
        return Some(format!("{} is above the maximum {hi}", scalar_text(v)));
    }
    if let Some(list) = one_of {
        let same = |a: &Scalar, b: &Scalar| match (a, b) {
            (Scalar::String(x), Scalar::String(y)) => x == y,
            (Scalar::Bool(x), Scalar::Bool(y)) => x == y,
            _ => match (scalar_f64(a), scalar_f64(b)) {
                (Some(x), Some(y)) => x == y,
                _ => false,
            },
        };
        if !list.iter().any(|x| same(x, v)) {
            return Some(format!(
                "{} is not one of {}",
                scalar_text(v),
                list.iter().map(scalar_text).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    None
}

fn scalar_f64(v: &Scalar) -> Option<f64> {
    match v {
        Scalar::Integer(i) => Some(*i as f64),
        Scalar::Number(f) => Some(*f),
        _ => None,
    }
}

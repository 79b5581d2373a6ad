//! Outcomes to JSON bytes, on every core for big answers: the one encoder behind the HTTP
//! answers and the command line's JSON and JSON lines, so both write the same bytes for the
//! same outcome (exactly `serde_json::to_writer(&outcome)`).

use crate::engine::Outcome;
use rayon::prelude::*;
use serde::Serialize;

/// Outcomes per encoding chunk; answers larger than one chunk are encoded on every core.
const CHUNK: usize = 1024;

/// Appends `v` as JSON.
pub fn write_json<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    v: &T,
) -> Result<(), serde_json::Error> {
    serde_json::to_writer(buf, v)
}

/// Each outcome's JSON followed by `sep`, in order, as parts of about [`CHUNK`] outcomes
/// encoded in parallel.
pub fn encode_parts(outcomes: &[Outcome], sep: u8) -> Result<Vec<Vec<u8>>, serde_json::Error> {
    let encode = |chunk: &[Outcome]| {
        let mut part = Vec::with_capacity(chunk.len() * 800);
        for o in chunk {
            write_json(&mut part, o)?;
            part.push(sep);
        }
        Ok(part)
    };
    if outcomes.len() <= CHUNK {
        return Ok(vec![encode(outcomes)?]);
    }
    outcomes.par_chunks(CHUNK).map(encode).collect()
}

/// `[outcome,...]`: the same bytes as serde_json's array of the outcomes.
pub fn write_outcomes(buf: &mut Vec<u8>, outcomes: &[Outcome]) -> Result<(), serde_json::Error> {
    if outcomes.len() <= CHUNK {
        return write_json(buf, outcomes);
    }
    buf.push(b'[');
    for part in encode_parts(outcomes, b',')? {
        buf.extend_from_slice(&part);
    }
    if buf.last() == Some(&b',') {
        buf.pop();
    }
    buf.push(b']');
    Ok(())
}

/// Appends a `Vec` of JSON lines' bytes as one line per outcome (`\n`-terminated).
pub fn encode_lines(outcomes: &[Outcome]) -> Result<Vec<Vec<u8>>, serde_json::Error> {
    encode_parts(outcomes, b'\n')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::snapshot::AccountError;

    #[test]
    fn parallel_array_is_serde_json_array() {
        for n in [0, 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7] {
            let outcomes: Vec<Outcome> = (0..n)
                .map(|i| {
                    let id = format!("a{i}");
                    Outcome::error(AccountError::new(Some(&id), "bad_record", "x"))
                })
                .collect();
            let mut buf = Vec::new();
            write_outcomes(&mut buf, &outcomes).unwrap();
            assert_eq!(buf, serde_json::to_vec(&outcomes).unwrap(), "{n} outcomes");
        }
    }
}

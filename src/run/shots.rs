//! `--shots` lists: numbers, and ranges that read well on the K axis of many-shot studies
//! (`0,1..2048:x2` is 0, 1, 2, 4, …, 2,048).

/// The K's one comma-separated entry of `--shots` names: `K`, `A..B` (every K from A to B),
/// `A..B:+S` (A, A+S, … up to B) or `A..B:xF` (A, A·F, A·F², … up to B).
pub fn parse_entry(entry: &str) -> Result<Vec<usize>, String> {
    let entry = entry.trim();
    let number = |s: &str, what: &str| -> Result<usize, String> {
        let k = s.trim().parse::<usize>().map_err(|_| {
            format!(
                "`{entry}`: {what} `{s}` is not a whole number ≥ 0; write K, A..B, A..B:+STEP \
                 or A..B:xFACTOR, e.g. --shots 0,1..2048:x2"
            )
        })?;
        if k > MAX_K {
            return Err(format!(
                "`{entry}`: {what} {k} is more than {MAX_K} demonstrations, which no model's \
                 context holds (each takes at least a token)"
            ));
        }
        Ok(k)
    };
    let Some((from, rest)) = entry.split_once("..") else {
        return Ok(vec![number(entry, "K")?]);
    };
    let (to, step) = match rest.split_once(':') {
        Some((to, step)) => (to, Some(step.trim())),
        None => (rest, None),
    };
    let (a, b) = (number(from, "the start")?, number(to, "the end")?);
    if b < a {
        return Err(format!(
            "`{entry}`: the range ends ({b}) before it starts ({a})"
        ));
    }
    let mut out = Vec::new();
    let mut k = a;
    let next: Box<dyn Fn(usize) -> Option<usize>> = match step {
        None => Box::new(|k: usize| k.checked_add(1)),
        Some(s) if s.starts_with('+') => {
            let d = number(&s[1..], "the step")?;
            if d == 0 {
                return Err(format!(
                    "`{entry}`: a step of +0 never ends; use +1 or more"
                ));
            }
            Box::new(move |k: usize| k.checked_add(d))
        }
        Some(s) if s.starts_with(['x', '*']) => {
            let f = number(&s[1..], "the factor")?;
            if f < 2 || a == 0 {
                return Err(format!(
                    "`{entry}`: a geometric range needs a start ≥ 1 and a factor ≥ 2 \
                     (e.g. 1..2048:x2; put 0 before it: 0,1..2048:x2)"
                ));
            }
            Box::new(move |k: usize| k.checked_mul(f))
        }
        Some(s) => {
            return Err(format!(
                "`{entry}`: the step `{s}` is neither +STEP nor xFACTOR (e.g. 0..64:+16, 1..2048:x2)"
            ));
        }
    };
    while k <= b {
        out.push(k);
        if out.len() > MAX_ENTRIES {
            return Err(format!(
                "`{entry}` names more than {MAX_ENTRIES} shot counts; use a larger step"
            ));
        }
        match next(k) {
            Some(n) => k = n,
            None => break,
        }
    }
    Ok(out)
}

/// More K's than any study plots: a range past it is a typo.
const MAX_ENTRIES: usize = 1000;

/// The largest K: a million demonstrations of at least a token each pass every context there
/// is, and K stays far inside every integer type the run folder and reports use for it.
pub const MAX_K: usize = 1_000_000;

#[cfg(test)]
mod tests {
    use super::{MAX_K, parse_entry};

    #[test]
    fn ranges_expand_as_written() {
        assert_eq!(parse_entry("32"), Ok(vec![32]));
        assert_eq!(parse_entry(" 2..5 "), Ok(vec![2, 3, 4, 5]));
        assert_eq!(parse_entry("0..64:+16"), Ok(vec![0, 16, 32, 48, 64]));
        assert_eq!(
            parse_entry("1..2048:x2").unwrap(),
            (0..12).map(|i| 1usize << i).collect::<Vec<_>>()
        );
        assert_eq!(parse_entry("1..100:x4"), Ok(vec![1, 4, 16, 64]));
        assert_eq!(parse_entry("5..5"), Ok(vec![5]));
    }

    #[test]
    fn bad_ranges_say_what_to_write() {
        for (bad, says) in [
            ("-1", "not a whole number"),
            ("8..2", "ends (2) before it starts (8)"),
            ("0..2048:x2", "start ≥ 1"),
            ("1..8:x1", "factor ≥ 2"),
            ("0..8:+0", "never ends"),
            ("0..8:/2", "neither +STEP nor xFACTOR"),
            ("0..100000", "more than 1000"),
            ("1..usize", "the end `usize`"),
        ] {
            let e = parse_entry(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        // K is bounded (no wrap in a 32-bit column): 4294967296 was once read back as 0.
        assert_eq!(parse_entry("1000000").unwrap(), vec![MAX_K]);
        assert_eq!(
            parse_entry("524288..1000000:x2").unwrap(),
            vec![524_288],
            "the next step passes the end"
        );
        for bad in ["1000001", "4294967296", "0..4294967296"] {
            let e = parse_entry(bad).unwrap_err();
            assert!(e.contains("more than 1000000 demonstrations"), "{bad}: {e}");
        }
    }
}

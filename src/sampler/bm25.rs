//! Okapi BM25 over the rendered inputs of the few-shot split, for `sampler: bm25`.

use std::collections::HashMap;

/// Term-frequency saturation.
const K1: f64 = 1.5;
/// Length normalisation.
const B: f64 = 0.75;

/// Lower-cased alphanumeric runs: enough to match words without a language-specific stemmer.
pub fn terms(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// A BM25 index over a fixed corpus.
pub struct Bm25 {
    docs: Vec<HashMap<String, u32>>,
    lengths: Vec<f64>,
    avg_len: f64,
    /// Documents containing each term.
    df: HashMap<String, u32>,
}

impl Bm25 {
    /// Indexes `corpus` (one string per document).
    pub fn new<'a>(corpus: impl IntoIterator<Item = &'a str>) -> Self {
        let mut docs = Vec::new();
        let mut lengths = Vec::new();
        let mut df: HashMap<String, u32> = HashMap::new();
        for text in corpus {
            let mut tf: HashMap<String, u32> = HashMap::new();
            let t = terms(text);
            lengths.push(t.len() as f64);
            for w in t {
                *tf.entry(w).or_default() += 1;
            }
            for w in tf.keys() {
                *df.entry(w.clone()).or_default() += 1;
            }
            docs.push(tf);
        }
        let avg_len = if lengths.is_empty() {
            0.0
        } else {
            lengths.iter().sum::<f64>() / lengths.len() as f64
        };
        Self {
            docs,
            lengths,
            avg_len,
            df,
        }
    }

    /// Lucene's idf, `ln(1 + (N − n + 0.5) / (n + 0.5))`: never negative, so a term in most
    /// documents cannot push a match below a non-match.
    fn idf(&self, term: &str) -> f64 {
        let n = f64::from(self.df.get(term).copied().unwrap_or(0));
        let big_n = self.docs.len() as f64;
        (1.0 + (big_n - n + 0.5) / (n + 0.5)).ln()
    }

    /// The BM25 score of every document for `query` (a repeated query term counts each time).
    pub fn scores(&self, query: &str) -> Vec<f64> {
        let q = terms(query);
        let idf: Vec<f64> = q.iter().map(|w| self.idf(w)).collect();
        self.docs
            .iter()
            .zip(&self.lengths)
            .map(|(tf, &len)| {
                let norm = K1 * (1.0 - B + B * len / self.avg_len.max(f64::MIN_POSITIVE));
                q.iter()
                    .zip(&idf)
                    .map(|(w, idf)| {
                        let f = f64::from(tf.get(w).copied().unwrap_or(0));
                        idf * f * (K1 + 1.0) / (f + norm)
                    })
                    .sum()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_match_a_hand_computed_corpus() {
        // N = 3, lengths 3, 2, 3: average 8/3. "cat" is in 2 docs: idf = ln(1 + 1.5/2.5) = ln 1.6;
        // "dog" in 1: idf = ln(1 + 2.5/1.5) = ln(8/3).
        let idx = Bm25::new(["the cat sat", "the dog", "Cat cat CAT!"]);
        let s = idx.scores("cat dog");
        let cat = 1.6f64.ln();
        let dog = (8.0f64 / 3.0).ln();
        // Length 3: norm = 1.5·(0.25 + 0.75·9/8) = 1.640625; length 2: 1.5·(0.25 + 0.75·6/8) = 1.21875.
        // doc 0: f(cat) = 1 → 2.5/2.640625.
        assert!((s[0] - cat * 2.5 / 2.640625).abs() < 1e-12, "{s:?}");
        // doc 1: f(dog) = 1 → 2.5/2.21875.
        assert!((s[1] - dog * 2.5 / 2.21875).abs() < 1e-12, "{s:?}");
        // doc 2: f(cat) = 3 (case folded) → 7.5/4.640625.
        assert!((s[2] - cat * 7.5 / 4.640625).abs() < 1e-12, "{s:?}");
        assert_eq!(idx.scores("zebra"), vec![0.0, 0.0, 0.0]);
    }

    #[test]
    fn terms_split_on_punctuation_and_fold_case() {
        assert_eq!(
            terms("It's GREAT, 10/10!"),
            vec!["it", "s", "great", "10", "10"]
        );
        assert!(terms("  ...  ").is_empty());
    }
}

//! Tokenizers built from GGUF metadata (`tokenizer.ggml.*`: byte-level BPE or SentencePiece-style
//! BPE), or a `tokenizer.json` beside the model or in its checkpoint folder.

use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
// The decoder reuses the normalizer's Replace.
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace as DecoderReplace;
use tokenizers::normalizers::utils::Sequence as NormalizerSequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// The pre-tokenizer regex of Qwen2's original `tokenizer.json`.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp `llama_token_type`): control and user-defined tokens are matched whole.
const TOKEN_TYPE_NORMAL: i32 = 1;
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// A text tokenizer plus the special-token facts scoring needs.
pub struct TextTokenizer {
    inner: Tokenizer,
    /// Beginning-of-sequence id, if the vocabulary has one.
    pub bos_id: Option<u32>,
    /// End-of-sequence id, if the vocabulary has one.
    pub eos_id: Option<u32>,
    /// Whether `<bos>` is prepended to every encoded text.
    pub add_bos: bool,
    /// Control tokens (`<|endoftext|>`, `<|im_end|>`, ...): generation stops at any of them.
    pub control_ids: Vec<u32>,
    /// Let the tokenizer's own post-processor add special tokens (checkpoint `tokenizer.json`)
    /// instead of `add_bos`.
    post_process: bool,
}

impl TextTokenizer {
    /// Builds the tokenizer for a GGUF model: `tokenizer.json` beside the file wins over the metadata.
    pub fn for_gguf(path: &Path, content: &gguf_file::Content) -> Result<Self> {
        let md = &content.metadata;
        let bos_id = md
            .get("tokenizer.ggml.bos_token_id")
            .and_then(|v| v.to_u32().ok());
        let eos_id = md
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.to_u32().ok());
        let add_bos = md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        let gguf_vocab = md
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .map(Vec::len);
        let control_ids = match md.get("tokenizer.ggml.token_type").map(|v| v.to_vec()) {
            Some(Ok(types)) => types
                .iter()
                .enumerate()
                .filter(|(_, t)| t.to_i32().ok() == Some(TOKEN_TYPE_CONTROL))
                .map(|(i, _)| i as u32)
                .collect(),
            _ => Vec::new(),
        };
        let beside = path.with_file_name("tokenizer.json");
        let inner = if beside.is_file() {
            let t = Tokenizer::from_file(&beside)
                .map_err(|e| anyhow::anyhow!("{}: cannot load tokenizer: {e}", beside.display()))?;
            // A tokenizer.json left beside another model would silently feed it foreign ids.
            if let Some(n) = gguf_vocab
                && t.get_vocab_size(true) != n
            {
                bail!(
                    "{}: its vocabulary has {} tokens but {} has {n}; it belongs to another model",
                    beside.display(),
                    t.get_vocab_size(true),
                    path.display()
                );
            }
            t
        } else {
            from_gguf_metadata(content)
                .with_context(|| format!("{}: tokenizer metadata", path.display()))?
        };
        Ok(Self {
            inner,
            bos_id,
            eos_id,
            add_bos,
            control_ids,
            post_process: false,
        })
    }

    /// The `tokenizer.json` of a checkpoint folder; its post-processor adds `<bos>` where the model
    /// wants one. Every special added token and every `eos` id ends generation.
    pub fn from_tokenizer_json(path: &Path, bos_id: Option<u32>, eos_ids: &[u32]) -> Result<Self> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
        let mut control_ids: Vec<u32> = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .chain(eos_ids.iter().copied())
            .collect();
        control_ids.sort_unstable();
        control_ids.dedup();
        Ok(Self {
            inner,
            bos_id,
            eos_id: eos_ids.first().copied(),
            add_bos: false,
            control_ids,
            post_process: true,
        })
    }

    /// Token ids of `text`, with `<bos>` first when the model adds one.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        // A tokenizer.json's pre-tokenizer regex can backtrack without end on some text; the
        // regex engine then panics at its retry limit.
        let enc = super::guard::no_panic(
            "tokenizer failed (its pre-tokenizer pattern gave up on this text)",
            || self.inner.encode_fast(text, self.post_process),
        )?
        .map_err(|e| anyhow::anyhow!("tokenizer failed: {e}"))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos
            && let Some(bos) = self.bos_id
        {
            ids.push(bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The vocabulary entry of one id (`<|im_end|>`, `<bos>`), for chat templates.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| anyhow::anyhow!("tokenizer failed: {e}"))
    }
}

fn from_gguf_metadata(content: &gguf_file::Content) -> Result<Tokenizer> {
    let md = &content.metadata;
    let get = |k: &str| md.get(k).with_context(|| format!("missing `{k}`"));
    let model = get("tokenizer.ggml.model")?.to_string()?.clone();
    let tokens: Vec<String> = get("tokenizer.ggml.tokens")?
        .to_vec()?
        .iter()
        .map(|v| v.to_string().cloned())
        .collect::<candle_core::Result<_>>()?;
    let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()?
            .iter()
            .map(|t| t.to_i32())
            .collect::<candle_core::Result<_>>()?,
        None => Vec::new(),
    };
    match model.as_str() {
        "gpt2" => byte_level_bpe(content, &tokens, &types),
        "llama" => sentencepiece_bpe(content, &tokens, &types),
        other => bail!(
            "tokenizer model `{other}` is not supported (gpt2, llama); put a tokenizer.json beside \
             the GGUF file"
        ),
    }
}

/// GPT-2-style byte-level BPE with the file's merges.
fn byte_level_bpe(
    content: &gguf_file::Content,
    tokens: &[String],
    types: &[i32],
) -> Result<Tokenizer> {
    let md = &content.metadata;
    let get = |k: &str| md.get(k).with_context(|| format!("missing `{k}`"));
    let merges: Vec<(String, String)> = get("tokenizer.ggml.merges")?
        .to_vec()?
        .iter()
        .map(|v| {
            let s = v.to_string()?;
            s.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| candle_core::Error::Msg(format!("merge `{s}` has no space")))
        })
        .collect::<candle_core::Result<_>>()?;
    let vocab: ahash::AHashMap<String, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build BPE: {e}"))?;
    let pre = md
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_else(|| "gpt2".to_string());
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tokenizer: PreTokenizerWrapper = match pre.as_str() {
        // SmolLM's own tokenizer.json isolates every numeric character before GPT-2 splitting.
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        "qwen2" => Sequence::new(vec![
            Split::new(
                SplitPattern::Regex(QWEN2_PATTERN.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| anyhow::anyhow!("bad qwen2 pattern: {e}"))?
            .into(),
            ByteLevel::new(false, true, false).into(),
        ])
        .into(),
        "gpt2" | "default" => byte_level.into(),
        other => bail!(
            "pre-tokenizer `{other}` is not supported; put a tokenizer.json beside the GGUF file"
        ),
    };
    let mut tok = Tokenizer::new(bpe);
    if pre == "qwen2" {
        // Qwen2's own tokenizer.json normalises to NFC before splitting.
        tok.with_normalizer(Some(tokenizers::normalizers::unicode::NFC))
            .map_err(|e| anyhow::anyhow!("cannot set the NFC normalizer: {e}"))?;
    }
    tok.with_pre_tokenizer(Some(pre_tokenizer));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(types.iter())
        .filter(|(_, t)| matches!(**t, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    tok.add_special_tokens(specials)
        .map_err(|e| anyhow::anyhow!("cannot add special tokens: {e}"))?;
    Ok(tok)
}

/// SentencePiece's space marker.
const SPACE: char = '▁';

/// SentencePiece-style BPE (`tokenizer.ggml.model = llama`, e.g. Gemma 3): spaces become `▁`, pieces
/// merge in score order (the file stores no merges: every normal piece that splits into two pieces
/// of the vocabulary is a merge, ranked by its score), unknown characters fall back to `<0xNN>`
/// bytes, and user-defined pieces (whitespace runs, `\n`, markup) are matched whole, as
/// SentencePiece does.
fn sentencepiece_bpe(
    content: &gguf_file::Content,
    tokens: &[String],
    types: &[i32],
) -> Result<Tokenizer> {
    let md = &content.metadata;
    let scores: Vec<f32> = match md.get("tokenizer.ggml.scores") {
        Some(v) => v
            .to_vec()?
            .iter()
            .map(|t| t.to_f32())
            .collect::<candle_core::Result<_>>()?,
        None => bail!("missing `tokenizer.ggml.scores` (a SentencePiece vocabulary needs them)"),
    };
    if scores.len() != tokens.len() || (!types.is_empty() && types.len() != tokens.len()) {
        bail!(
            "{} tokens but {} scores and {} token types",
            tokens.len(),
            scores.len(),
            types.len()
        );
    }
    // The file writes whitespace-run pieces with spaces; the model sees `▁`.
    let spelled: Vec<String> = tokens
        .iter()
        .map(|t| {
            if t.contains(' ') && t.trim().is_empty() {
                SPACE.to_string().repeat(t.chars().count())
            } else {
                t.clone()
            }
        })
        .collect();
    let vocab: ahash::AHashMap<String, u32> = spelled
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let kind = |i: usize| types.get(i).copied().unwrap_or(TOKEN_TYPE_NORMAL);
    let mut ranked: Vec<(f32, usize, String, String)> = Vec::new();
    for (i, piece) in spelled.iter().enumerate() {
        if kind(i) != TOKEN_TYPE_NORMAL {
            continue;
        }
        for (at, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(at);
            if vocab.contains_key(l) && vocab.contains_key(r) {
                ranked.push((scores[i], i, l.to_string(), r.to_string()));
            }
        }
    }
    // Higher score first; ties keep vocabulary order.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let merges: Vec<(String, String)> = ranked.into_iter().map(|(_, _, l, r)| (l, r)).collect();
    let unk = md
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(|v| v.to_u32().ok())
        .and_then(|i| spelled.get(i as usize).cloned());
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(u) = unk {
        builder = builder.unk_token(u);
    }
    let bpe = builder
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build BPE: {e}"))?;
    let mut tok = Tokenizer::new(bpe);
    let replace = Replace::new(" ", SPACE.to_string())
        .map_err(|e| anyhow::anyhow!("cannot build the space normalizer: {e}"))?;
    let prefix = md
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(false);
    let set = if prefix {
        tok.with_normalizer(Some(NormalizerSequence::new(vec![
            Prepend::new(SPACE.to_string()).into(),
            replace.into(),
        ])))
    } else {
        tok.with_normalizer(Some(replace))
    };
    set.map_err(|e| anyhow::anyhow!("cannot set the normalizer: {e}"))?;
    tok.with_decoder(Some(DecoderSequence::new(vec![
        DecoderReplace::new(SPACE.to_string(), " ")
            .map_err(|e| anyhow::anyhow!("cannot build the decoder: {e}"))?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ])));
    let mut specials = Vec::new();
    let mut user = Vec::new();
    for (i, piece) in spelled.iter().enumerate() {
        match kind(i) {
            TOKEN_TYPE_CONTROL => specials.push(AddedToken::from(piece.clone(), true)),
            // Matched in the normalised text, where spaces are already `▁`.
            TOKEN_TYPE_USER_DEFINED => user.push(AddedToken::from(piece.clone(), false)),
            _ => {}
        }
    }
    tok.add_special_tokens(specials)
        .map_err(|e| anyhow::anyhow!("cannot add control tokens: {e}"))?;
    tok.add_tokens(user)
        .map_err(|e| anyhow::anyhow!("cannot add user-defined tokens: {e}"))?;
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tokenizer.json whose pre-tokenizer pattern backtracks exponentially (`(a|aa)+$` on a
    /// run of `a` that does not end the text): the regex engine gives up and panics; encoding is
    /// an error instead.
    #[test]
    fn a_backtracking_pre_tokenizer_is_an_error_not_a_panic() {
        let dir = std::env::temp_dir().join(format!("icl-eval-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        std::fs::write(
            &path,
            r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
                "normalizer": null,
                "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a|aa)+$"},
                                  "behavior": "Isolated", "invert": false},
                "post_processor": null, "decoder": null,
                "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1, "[UNK]": 2},
                          "unk_token": "[UNK]"}}"#,
        )
        .unwrap();
        let t = TextTokenizer::from_tokenizer_json(&path, None, &[]).unwrap();
        assert!(t.encode("ab").is_ok());
        let hostile = format!("{}b", "a".repeat(40));
        let e = t.encode(&hostile).unwrap_err().to_string();
        assert!(
            e.contains("tokenizer failed") && e.contains("retry-limit"),
            "{e}"
        );
    }
}

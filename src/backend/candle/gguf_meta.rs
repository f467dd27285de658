//! Typed reads of `ARCH.*` GGUF metadata keys, with errors naming the key.

use anyhow::{Context, Result, bail};
use candle_core::quantized::gguf_file::{self, Value};

use super::config::{DecoderConfig, Rope, plausible_shape};

/// The metadata of one architecture (keys are prefixed by its name).
pub struct Meta<'a> {
    content: &'a gguf_file::Content,
    arch: &'a str,
}

impl<'a> Meta<'a> {
    pub fn new(content: &'a gguf_file::Content, arch: &'a str) -> Self {
        Self { content, arch }
    }

    fn get(&self, key: &str) -> Option<(String, &Value)> {
        let full = format!("{}.{key}", self.arch);
        let v = self.content.metadata.get(&full)?;
        Some((full, v))
    }

    /// A non-negative integer key, whatever integer width the writer chose.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        let Some((full, v)) = self.get(key) else {
            return Ok(None);
        };
        let n: i128 = match v {
            Value::U8(x) => *x as i128,
            Value::I8(x) => *x as i128,
            Value::U16(x) => *x as i128,
            Value::I16(x) => *x as i128,
            Value::U32(x) => *x as i128,
            Value::I32(x) => *x as i128,
            Value::U64(x) => *x as i128,
            Value::I64(x) => *x as i128,
            other => bail!("metadata `{full}` is {other:?}, expected an integer"),
        };
        usize::try_from(n)
            .map(Some)
            .with_context(|| format!("metadata `{full}` = {n} is out of range"))
    }

    /// A required integer key.
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .with_context(|| format!("missing metadata `{}.{key}`", self.arch))
    }

    /// A boolean key.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        let Some((full, v)) = self.get(key) else {
            return Ok(None);
        };
        match v {
            Value::Bool(b) => Ok(Some(*b)),
            other => bail!("metadata `{full}` is {other:?}, expected a boolean"),
        }
    }

    /// A float key (f32 or f64).
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        let Some((full, v)) = self.get(key) else {
            return Ok(None);
        };
        Ok(Some(match v {
            Value::F32(x) => *x as f64,
            Value::F64(x) => *x,
            other => bail!("metadata `{full}` is {other:?}, expected a float"),
        }))
    }

    /// A required float key.
    pub fn f64(&self, key: &str) -> Result<f64> {
        self.opt_f64(key)?
            .with_context(|| format!("missing metadata `{}.{key}`", self.arch))
    }

    /// The shared decoder's base shape from the keys every architecture has.
    pub fn base(&self) -> Result<DecoderConfig> {
        let n_heads = self.usize("attention.head_count")?;
        let hidden = self.usize("embedding_length")?;
        let head_dim = match self.opt_usize("attention.key_length")? {
            Some(d) => d,
            None if n_heads > 0 && hidden.is_multiple_of(n_heads) => hidden / n_heads,
            None => bail!("embedding_length {hidden} is not a multiple of head_count {n_heads}"),
        };
        let n_layers = self.usize("block_count")?;
        plausible_shape(n_layers, n_heads, head_dim, hidden)?;
        Ok(DecoderConfig::base(
            self.arch,
            n_layers,
            n_heads,
            self.opt_usize("attention.head_count_kv")?
                .unwrap_or(n_heads),
            head_dim,
            hidden,
            self.usize("context_length")?,
        ))
    }

    /// Rotary base and linear scaling (`rope.freq_base`, `rope.scaling.type`/`factor`).
    pub fn rope(&self, default_base: f32) -> Result<Rope> {
        let base = self
            .opt_f64("rope.freq_base")?
            .map_or(default_base, |b| b as f32);
        let kind = self
            .get("rope.scaling.type")
            .and_then(|(_, v)| v.to_string().ok().cloned());
        let factor = self.opt_f64("rope.scaling.factor")?.unwrap_or(1.0) as f32;
        let linear_factor = match kind.as_deref() {
            None | Some("none") => 1.0,
            Some("linear") => factor,
            Some(other) => bail!(
                "rope scaling `{other}` ({}.rope.scaling.type) is not supported",
                self.arch
            ),
        };
        Ok(Rope {
            base,
            linear_factor,
        })
    }
}

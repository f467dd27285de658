//! Reading a task's data files into docs (JSON objects): jsonl, JSON arrays, csv/tsv (with a
//! header, or with the column names in the YAML), parquet, regex-matched lines and records of N
//! lines; gzip (`.gz`) and bzip2 (`.bz2`) files are decompressed first. Tabular formats go through
//! polars. Every error names the file and, where there is one, the line.

use std::io::Read;
use std::path::Path;

use serde_json::{Map, Value};

use super::spec::DatasetSpec;

/// The formats a data file may have.
pub const FORMATS: &str = "jsonl, json, csv, tsv, parquet, regex, lines";

/// Parses one data file's bytes into docs; the format is `dataset.format` or the file extension
/// (after a `.gz` or `.bz2`).
pub fn read(path: &Path, bytes: &[u8], ds: &DatasetSpec) -> Result<Vec<Value>, Vec<String>> {
    let shown = path.display().to_string();
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let (inner, bytes) = decompress(&shown, name, bytes)?;
    let ext = Path::new(inner)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("");
    let format = ds.format.clone().unwrap_or_else(|| ext.to_string());
    if ds.columns.is_some() && !matches!(format.as_str(), "csv" | "tsv" | "lines") {
        return Err(vec![format!(
            "field `dataset.columns` applies to csv, tsv and lines files, not {format} ({shown})"
        )]);
    }
    match format.as_str() {
        "jsonl" => read_jsonl(&shown, &bytes),
        "json" => read_json_array(&shown, &bytes),
        "csv" | "tsv" => read_csv(
            &shown,
            bytes,
            if format == "tsv" { b'\t' } else { b',' },
            ds.columns.as_deref(),
        ),
        "parquet" => read_parquet(&shown, bytes),
        "regex" => match &ds.pattern {
            Some(p) => read_regex(&shown, &bytes, p),
            None => Err(vec![
                "field `dataset.pattern` is required for format regex".to_string(),
            ]),
        },
        "lines" => match &ds.columns {
            Some(names) if !names.is_empty() => read_line_records(&shown, &bytes, names),
            _ => Err(vec![
                "field `dataset.columns` is required for format lines: one name per line of a \
                 record"
                    .to_string(),
            ]),
        },
        other => Err(vec![format!(
            "field `dataset.format`: `{other}` is not a known format for {shown} ({FORMATS})"
        )]),
    }
}

/// The most bytes a compressed data file may expand to: benchmark splits are megabytes to a few
/// hundred; a file that expands further (a decompression bomb) is refused before it fills memory.
pub const MAX_DECOMPRESSED: u64 = 1 << 30;

/// The file name without its compression extension, and the decompressed bytes.
fn decompress<'a>(
    shown: &str,
    name: &'a str,
    bytes: &[u8],
) -> Result<(&'a str, Vec<u8>), Vec<String>> {
    decompress_within(shown, name, bytes, MAX_DECOMPRESSED)
}

/// [`decompress`], refusing more than `max` decompressed bytes.
fn decompress_within<'a>(
    shown: &str,
    name: &'a str,
    bytes: &[u8],
    max: u64,
) -> Result<(&'a str, Vec<u8>), Vec<String>> {
    let failed = |e: std::io::Error, kind: &str| vec![format!("{shown}: not valid {kind}: {e}")];
    // Read one byte past the bound, so a file that reaches it is told apart from one that fits.
    let bounded = |reader: &mut dyn Read, kind: &str| {
        let mut out = Vec::new();
        reader
            .take(max + 1)
            .read_to_end(&mut out)
            .map_err(|e| failed(e, kind))?;
        if out.len() as u64 > max {
            return Err(vec![format!(
                "{shown}: expands past {} MiB when decompressed (from {} bytes); a data file \
                 that large is refused (decompress it yourself if it is genuine)",
                max >> 20,
                bytes.len()
            )]);
        }
        Ok(out)
    };
    if let Some(inner) = name.strip_suffix(".gz") {
        let out = bounded(&mut flate2::read::MultiGzDecoder::new(bytes), "gzip")?;
        Ok((inner, out))
    } else if let Some(inner) = name.strip_suffix(".bz2") {
        let out = bounded(&mut bzip2::read::MultiBzDecoder::new(bytes), "bzip2")?;
        Ok((inner, out))
    } else {
        Ok((name, bytes.to_vec()))
    }
}

/// Adds line-aligned fields from other files (e.g. PIQA's labels in `valid-labels.lst`): the
/// n-th non-empty line of each file becomes its field in the n-th doc.
pub fn add_column_files(
    mut docs: Vec<Value>,
    shown: &str,
    files: &[(String, String, Vec<u8>)],
) -> Result<Vec<Value>, Vec<String>> {
    for (field, file, bytes) in files {
        let text =
            std::str::from_utf8(bytes).map_err(|e| vec![format!("{file}: not UTF-8: {e}")])?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.len() != docs.len() {
            return Err(vec![format!(
                "field `dataset.column_files.{field}`: {file} has {} lines but {shown} has {} docs",
                lines.len(),
                docs.len()
            )]);
        }
        for (d, l) in docs.iter_mut().zip(lines) {
            if let Value::Object(m) = d {
                m.insert(field.clone(), Value::String(l.trim().to_string()));
            }
        }
    }
    Ok(docs)
}

fn read_json_array(shown: &str, bytes: &[u8]) -> Result<Vec<Value>, Vec<String>> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Array(items)) => {
            let bad: Vec<String> = items
                .iter()
                .enumerate()
                .filter(|(_, v)| !v.is_object())
                .map(|(i, _)| format!("{shown}: item {i} of the array is not a JSON object"))
                .collect();
            if bad.is_empty() { Ok(items) } else { Err(bad) }
        }
        Ok(_) => Err(vec![format!(
            "{shown}: format json needs an array of objects; for one object per line use jsonl"
        )]),
        Err(e) => Err(vec![format!("{shown}: invalid JSON: {e}")]),
    }
}

/// Records of `names.len()` consecutive lines (HellaSwag's text export: context, label, endings).
fn read_line_records(
    shown: &str,
    bytes: &[u8],
    names: &[String],
) -> Result<Vec<Value>, Vec<String>> {
    let text = std::str::from_utf8(bytes).map_err(|e| vec![format!("{shown}: not UTF-8: {e}")])?;
    let lines: Vec<&str> = text.lines().collect();
    // A trailing newline may leave one empty line at the end; nothing else may be left over.
    let n = lines.len() - usize::from(lines.last().is_some_and(|l| l.is_empty()));
    if !n.is_multiple_of(names.len()) {
        return Err(vec![format!(
            "{shown}: {n} lines are not whole records of {} lines (`dataset.columns`); the last \
             record starts at line {}",
            names.len(),
            n - n % names.len() + 1
        )]);
    }
    Ok(lines[..n]
        .chunks(names.len())
        .map(|rec| {
            Value::Object(
                names
                    .iter()
                    .zip(rec)
                    .map(|(k, v)| (k.clone(), Value::String(v.to_string())))
                    .collect(),
            )
        })
        .collect())
}

/// Each non-empty line of a UTF-8 file through `parse`, errors prefixed `FILE:LINE:`.
fn each_line(
    shown: &str,
    bytes: &[u8],
    parse: impl Fn(&str) -> Result<Value, String>,
) -> Result<Vec<Value>, Vec<String>> {
    let text = std::str::from_utf8(bytes).map_err(|e| vec![format!("{shown}: not UTF-8: {e}")])?;
    let mut docs = Vec::new();
    let mut errs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse(line) {
            Ok(v) => docs.push(v),
            Err(e) => errs.push(format!("{shown}:{}: {e}", i + 1)),
        }
    }
    if errs.is_empty() { Ok(docs) } else { Err(errs) }
}

fn read_jsonl(shown: &str, bytes: &[u8]) -> Result<Vec<Value>, Vec<String>> {
    each_line(shown, bytes, |line| {
        match serde_json::from_str::<Value>(line) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(_) => Err("each line must be a JSON object".into()),
            Err(e) => Err(format!("invalid JSON: {e}")),
        }
    })
}

fn read_regex(shown: &str, bytes: &[u8], pattern: &str) -> Result<Vec<Value>, Vec<String>> {
    let re = regex::Regex::new(pattern)
        .map_err(|e| vec![format!("field `dataset.pattern`: invalid regex: {e}")])?;
    let names: Vec<&str> = re.capture_names().flatten().collect();
    if names.is_empty() {
        return Err(vec![
            "field `dataset.pattern` has no named group (?P<name>...) to make fields from".into(),
        ]);
    }
    each_line(shown, bytes, |line| {
        let c = re
            .captures(line)
            .ok_or("line does not match `dataset.pattern`")?;
        Ok(Value::Object(
            names
                .iter()
                .map(|n| {
                    let v = c.name(n).map_or("", |m| m.as_str());
                    (n.to_string(), Value::String(v.to_string()))
                })
                .collect(),
        ))
    })
}

fn read_csv(
    shown: &str,
    bytes: Vec<u8>,
    sep: u8,
    columns: Option<&[String]>,
) -> Result<Vec<Value>, Vec<String>> {
    use polars::prelude::*;
    // Every column is text: type inference would turn an answer "007" into 7.
    let df = CsvReadOptions::default()
        .with_has_header(columns.is_none())
        .with_infer_schema_length(Some(0))
        .with_parse_options(CsvParseOptions::default().with_separator(sep))
        .into_reader_with_file_handle(std::io::Cursor::new(bytes))
        .finish()
        .map_err(|e| vec![format!("{shown}: cannot read as CSV: {e}")])?;
    let mut docs = frame_to_docs(&df);
    if let Some(names) = columns {
        if df.width() != names.len() {
            return Err(vec![format!(
                "{shown}: rows have {} columns but field `dataset.columns` names {}",
                df.width(),
                names.len()
            )]);
        }
        let old: Vec<String> = df
            .get_column_names()
            .iter()
            .map(|s| s.to_string())
            .collect();
        for d in &mut docs {
            if let Value::Object(m) = d {
                let renamed: Map<String, Value> = old
                    .iter()
                    .zip(names)
                    .map(|(o, n)| (n.clone(), m.remove(o).unwrap_or(Value::Null)))
                    .collect();
                *m = renamed;
            }
        }
    }
    Ok(docs)
}

fn read_parquet(shown: &str, bytes: Vec<u8>) -> Result<Vec<Value>, Vec<String>> {
    use polars::prelude::*;
    let df = ParquetReader::new(std::io::Cursor::new(bytes))
        .finish()
        .map_err(|e| vec![format!("{shown}: cannot read as Parquet: {e}")])?;
    Ok(frame_to_docs(&df))
}

fn frame_to_docs(df: &polars::prelude::DataFrame) -> Vec<Value> {
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    (0..df.height())
        .map(|i| {
            let row = df.get(i).unwrap_or_default();
            let m: Map<String, Value> = names
                .iter()
                .zip(row)
                .map(|(n, v)| (n.clone(), any_to_json(v)))
                .collect();
            Value::Object(m)
        })
        .collect()
}

/// One parquet/polars value as JSON, lists and structs (the Hub's `Sequence` and nested
/// features, e.g. ARC's `choices: {text, label}`) included.
fn any_to_json(v: polars::prelude::AnyValue) -> Value {
    use polars::prelude::AnyValue;
    match v {
        AnyValue::Null => Value::Null,
        AnyValue::Boolean(b) => Value::Bool(b),
        AnyValue::String(s) => Value::String(s.to_string()),
        AnyValue::StringOwned(s) => Value::String(s.to_string()),
        AnyValue::Int8(x) => x.into(),
        AnyValue::Int16(x) => x.into(),
        AnyValue::Int32(x) => x.into(),
        AnyValue::Int64(x) => x.into(),
        AnyValue::UInt8(x) => x.into(),
        AnyValue::UInt16(x) => x.into(),
        AnyValue::UInt32(x) => x.into(),
        AnyValue::UInt64(x) => x.into(),
        AnyValue::Float32(x) => (x as f64).into(),
        AnyValue::Float64(x) => x.into(),
        AnyValue::List(s) => Value::Array(s.iter().map(any_to_json).collect()),
        AnyValue::StructOwned(p) => {
            let (values, fields) = *p;
            Value::Object(
                fields
                    .iter()
                    .zip(values)
                    .map(|(f, v)| (f.name().to_string(), any_to_json(v)))
                    .collect(),
            )
        }
        ref s @ AnyValue::Struct(_, _, fields) => Value::Object(
            fields
                .iter()
                .zip(s._iter_struct_av())
                .map(|(f, v)| (f.name().to_string(), any_to_json(v)))
                .collect(),
        ),
        other => Value::String(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn spec(yaml: &str) -> DatasetSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn compressed_files_are_read_by_their_inner_extension() {
        let jsonl = b"{\"a\": \"x\"}\n{\"a\": \"y\"}\n";
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(jsonl).unwrap();
        let gz = gz.finish().unwrap();
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        bz.write_all(jsonl).unwrap();
        let bz = bz.finish().unwrap();
        let ds = spec("path: x");
        for (name, bytes) in [("d.jsonl.gz", gz), ("d.jsonl.bz2", bz)] {
            let docs = read(Path::new(name), &bytes, &ds).unwrap();
            assert_eq!(docs.len(), 2, "{name}");
            assert_eq!(docs[1]["a"], "y");
        }
        // A decompression bomb stops at the bound, with the bound's memory, not the bomb's.
        let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        bomb.write_all(&vec![b'\n'; 3 << 20]).unwrap();
        let bomb = bomb.finish().unwrap();
        let e = decompress_within("b.jsonl.gz", "b.jsonl.gz", &bomb, 2 << 20).unwrap_err();
        assert!(e[0].contains("b.jsonl.gz: expands past 2 MiB"), "{e:?}");
        assert!(decompress_within("b.jsonl.gz", "b.jsonl.gz", &bomb, 3 << 20).is_ok());
        let e = read(Path::new("d.jsonl.gz"), b"not gzip", &ds).unwrap_err();
        assert!(e[0].contains("d.jsonl.gz: not valid gzip"), "{e:?}");
    }

    #[test]
    fn json_arrays_headerless_csv_and_line_records() {
        let docs = read(
            Path::new("a.json"),
            br#"[{"q": "1"}, {"q": "2"}]"#,
            &spec("path: x"),
        )
        .unwrap();
        assert_eq!(docs[1]["q"], "2");
        let e = read(Path::new("a.json"), br#"{"q": 1}"#, &spec("path: x")).unwrap_err();
        assert!(e[0].contains("array of objects"), "{e:?}");

        let ds = spec("{path: x, columns: [question, answer]}");
        let docs = read(Path::new("q.csv"), b"What is 1+1?,2\n\"a, b\",007\n", &ds).unwrap();
        assert_eq!(docs.len(), 2, "no header row");
        assert_eq!(docs[1]["question"], "a, b");
        assert_eq!(docs[1]["answer"], "007", "text stays text");
        let ds3 = spec("{path: x, columns: [a, b, c]}");
        let e = read(Path::new("q.csv"), b"1,2\n", &ds3).unwrap_err();
        assert!(
            e[0].contains("2 columns") && e[0].contains("names 3"),
            "{e:?}"
        );

        let ds = spec("{path: x, format: lines, columns: [ctx, label]}");
        let docs = read(Path::new("h.txt"), b"a man\n1\na dog\n0\n", &ds).unwrap();
        assert_eq!((docs.len(), docs[1]["ctx"].as_str()), (2, Some("a dog")));
        let e = read(Path::new("h.txt"), b"a man\n1\na dog\n", &ds).unwrap_err();
        assert!(
            e[0].contains("h.txt: 3 lines") && e[0].contains("line 3"),
            "{e:?}"
        );
        let e = read(Path::new("h.jsonl"), b"{}", &ds3).unwrap_err();
        assert!(e[0].contains("`dataset.columns` applies to"), "{e:?}");
    }

    #[test]
    fn column_files_must_have_a_line_per_doc() {
        let docs = vec![
            serde_json::json!({"goal": "a"}),
            serde_json::json!({"goal": "b"}),
        ];
        let labels = (
            "label".to_string(),
            "labels.lst".to_string(),
            b"0\n1\n".to_vec(),
        );
        let out = add_column_files(docs.clone(), "valid.jsonl", &[labels]).unwrap();
        assert_eq!(out[1]["label"], "1");
        let short = (
            "label".to_string(),
            "labels.lst".to_string(),
            b"0\n".to_vec(),
        );
        let e = add_column_files(docs, "valid.jsonl", &[short]).unwrap_err();
        assert!(
            e[0].contains("labels.lst has 1 lines but valid.jsonl has 2 docs"),
            "{e:?}"
        );
    }
}

//! `.env` files: `KEY=value` lines, as Docker Compose and systemd read them.
//!
//! Blank lines and `#` comments are skipped, an `export ` prefix is allowed,
//! values may be single-quoted (literal) or double-quoted (with `\n`, `\"`
//! and `\\` escapes); unquoted values end at ` #`.

/// A line that could not be read, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFileError {
    pub line: usize,
    pub message: String,
}

/// Parses a whole file: the variables of the good lines, and every bad line.
pub fn parse(text: &str) -> (Vec<(String, String)>, Vec<EnvFileError>) {
    let mut vars = Vec::new();
    let mut errors = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            errors.push(EnvFileError {
                line: n + 1,
                message: "expected KEY=value (the line is not shown: an env file may hold secrets)"
                    .to_string(),
            });
            continue;
        };
        let key = key.trim();
        let valid = !key.is_empty()
            && !key.as_bytes()[0].is_ascii_digit()
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            errors.push(EnvFileError {
                line: n + 1,
                message: "the name before `=` is not a variable name (letters, digits and _)"
                    .to_string(),
            });
            continue;
        }
        match unquote(value.trim()) {
            Ok(v) => vars.push((key.to_string(), v)),
            Err(m) => errors.push(EnvFileError {
                line: n + 1,
                message: m,
            }),
        }
    }
    (vars, errors)
}

fn unquote(v: &str) -> Result<String, String> {
    if let Some(rest) = v.strip_prefix('\'') {
        return rest
            .strip_suffix('\'')
            .map(str::to_string)
            .ok_or_else(|| "a single-quoted value is never closed".to_string());
    }
    if let Some(rest) = v.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Ok(out),
                '\\' => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(other) => out.push(other),
                    None => break,
                },
                c => out.push(c),
            }
        }
        return Err("a double-quoted value is never closed".to_string());
    }
    let end = v.find(" #").unwrap_or(v.len());
    Ok(v[..end].trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_common_forms() {
        let text = "# comment\n\nA=1\nexport B = two words # note\nC='lit $x'\nD=\"a\\nb\"\nE=\n";
        let (vars, errors) = parse(text);
        assert!(errors.is_empty());
        let want: Vec<(String, String)> = [
            ("A", "1"),
            ("B", "two words"),
            ("C", "lit $x"),
            ("D", "a\nb"),
            ("E", ""),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(vars, want);
    }

    #[test]
    fn reports_every_bad_line() {
        let (vars, errs) = parse("GOOD=1\nnot a pair\n1BAD=x\nQ=\"open\n");
        assert_eq!(vars, vec![("GOOD".to_string(), "1".to_string())]);
        assert_eq!(
            errs.iter().map(|e| e.line).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
    }
}

//! `${VAR}` interpolation of string values.
//!
//! Forms: `${VAR}` (an error when unset), `${VAR:-default}` (default when
//! unset or empty), `${VAR:?message}` (an error with the user's message when
//! unset or empty), and `$$` for a literal `$`. A `$` followed by anything
//! else is kept as it is.

/// A problem found while interpolating one string. `offset..end` is the byte
/// range of the offending `${...}` inside the string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpError {
    pub offset: usize,
    pub end: usize,
    pub kind: InterpErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterpErrorKind {
    /// The variable is not set and there is no default.
    Missing {
        var: String,
        message: Option<String>,
    },
    /// `${` without its `}`, or a name that is not a variable name.
    Syntax(String),
}

/// Replaces every variable reference in `input`. All problems of the string
/// are returned together.
pub fn interpolate(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<InterpError>> {
    if !input.contains('$') {
        return Ok(input.to_string());
    }
    let mut out = String::with_capacity(input.len());
    let mut errors = Vec::new();
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < input.len() {
        let rest = &input[i..];
        if rest.starts_with("$$") {
            out.push('$');
            i += 2;
            continue;
        }
        if !rest.starts_with("${") {
            let c = rest.chars().next().unwrap_or('$');
            out.push(c);
            i += c.len_utf8();
            continue;
        }
        let Some(close) = rest.find('}') else {
            errors.push(InterpError {
                offset: i,
                end: input.len(),
                kind: InterpErrorKind::Syntax("`${` is never closed by `}`".into()),
            });
            break;
        };
        let inner = &rest[2..close];
        let (name, op) = match inner.find([':', '-', '?']) {
            Some(p) => (&inner[..p], Some(&inner[p..])),
            None => (inner, None),
        };
        let end = i + close + 1;
        let valid_name = !name.is_empty()
            && !name.as_bytes()[0].is_ascii_digit()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_name {
            errors.push(InterpError {
                offset: i,
                end,
                kind: InterpErrorKind::Syntax(format!(
                    "`${{{inner}}}` is not a variable reference; expected ${{NAME}}, ${{NAME:-default}} or ${{NAME:?message}}"
                )),
            });
            i = end;
            continue;
        }
        let value = lookup(name);
        match op {
            None => match value {
                Some(v) => out.push_str(&v),
                None => errors.push(InterpError {
                    offset: i,
                    end,
                    kind: InterpErrorKind::Missing {
                        var: name.to_string(),
                        message: None,
                    },
                }),
            },
            Some(op) if op.starts_with(":-") => match value.filter(|v| !v.is_empty()) {
                Some(v) => out.push_str(&v),
                None => out.push_str(&op[2..]),
            },
            Some(op) if op.starts_with(":?") => match value.filter(|v| !v.is_empty()) {
                Some(v) => out.push_str(&v),
                None => errors.push(InterpError {
                    offset: i,
                    end,
                    kind: InterpErrorKind::Missing {
                        var: name.to_string(),
                        message: Some(op[2..].to_string()).filter(|m| !m.is_empty()),
                    },
                }),
            },
            Some(_) => errors.push(InterpError {
                offset: i,
                end,
                kind: InterpErrorKind::Syntax(format!(
                    "`${{{inner}}}` is not a variable reference; expected ${{NAME}}, ${{NAME:-default}} or ${{NAME:?message}}"
                )),
            }),
        }
        i = end;
    }
    let _ = bytes;
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn forms() {
        let ok = |s: &str| interpolate(s, &env).unwrap();
        assert_eq!(ok("postgres://${HOST}/x"), "postgres://db/x");
        assert_eq!(ok("${NOPE:-fallback}"), "fallback");
        assert_eq!(ok("${EMPTY:-fallback}"), "fallback");
        assert_eq!(ok("${HOST:?needed}"), "db");
        assert_eq!(ok("cost: $$5 and $HOME"), "cost: $5 and $HOME");
        assert_eq!(ok("${NOPE:-}"), "");
    }

    #[test]
    fn every_missing_variable_is_reported() {
        let errs = interpolate("${A}-${B:?set B}-${HOST}", &env).unwrap_err();
        assert_eq!(
            errs,
            vec![
                InterpError {
                    offset: 0,
                    end: 4,
                    kind: InterpErrorKind::Missing {
                        var: "A".into(),
                        message: None
                    }
                },
                InterpError {
                    offset: 5,
                    end: 16,
                    kind: InterpErrorKind::Missing {
                        var: "B".into(),
                        message: Some("set B".into())
                    }
                },
            ]
        );
    }

    #[test]
    fn syntax_errors() {
        assert!(matches!(
            &interpolate("${A", &env).unwrap_err()[0].kind,
            InterpErrorKind::Syntax(_)
        ));
        assert!(matches!(
            &interpolate("${1A}", &env).unwrap_err()[0].kind,
            InterpErrorKind::Syntax(_)
        ));
        assert!(matches!(
            &interpolate("${A-x}", &env).unwrap_err()[0].kind,
            InterpErrorKind::Syntax(_)
        ));
    }
}

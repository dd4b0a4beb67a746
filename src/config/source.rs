//! The texts warden read its configuration from, and positions inside them.
//!
//! Every value of the registry keeps a [`Span`] back to the bytes the user
//! wrote, so that an error can print `file:line:column`, the offending line
//! and a caret under the value, long after profiles and defaults were merged.

use std::io;
use std::path::{Path, PathBuf};

/// Where the loader gets its bytes and environment from.
///
/// The configuration stage never touches the file system or the process
/// environment directly; it asks this trait. Tests pass an in-memory
/// implementation, `main` passes [`RealSources`].
pub trait Sources {
    /// Reads a whole file as UTF-8 text.
    fn read(&self, path: &Path) -> io::Result<String>;
    /// Looks up a variable of the process environment.
    fn var(&self, name: &str) -> Option<String>;
}

/// No file and no variable: for loading text already in hand, and for
/// re-reading values that need neither.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSources;

impl Sources for NoSources {
    fn read(&self, path: &Path) -> io::Result<String> {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is not read here", path.display()),
        ))
    }
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

/// The real file system and process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealSources;

impl Sources for RealSources {
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// Index of a file in a [`SourceMap`].
pub type FileId = u32;

/// A byte range in one source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub file: FileId,
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(file: FileId, range: std::ops::Range<usize>) -> Span {
        Span {
            file,
            start: range.start as u32,
            end: range.end as u32,
        }
    }
}

/// One file that was read, with its line starts for position look-ups.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
    line_starts: Vec<usize>,
}

/// A resolved position: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// All files read while loading one registry.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    /// Adds a file and returns its id.
    pub fn add(&mut self, path: PathBuf, text: String) -> FileId {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        self.files.push(SourceFile {
            path,
            text,
            line_starts,
        });
        (self.files.len() - 1) as FileId
    }

    pub fn file(&self, id: FileId) -> Option<&SourceFile> {
        self.files.get(id as usize)
    }

    /// The line and column where a span starts.
    pub fn position(&self, span: Span) -> Option<Position> {
        let file = self.file(span.file)?;
        let offset = (span.start as usize).min(file.text.len());
        let line = file.line_starts.partition_point(|&s| s <= offset) - 1;
        let line_start = file.line_starts[line];
        let column = file.text.get(line_start..offset)?.chars().count() + 1;
        Some(Position {
            line: line + 1,
            column,
        })
    }

    /// The text of a 1-based line, without its line break.
    pub fn line_text(&self, file: FileId, line: usize) -> Option<&str> {
        let f = self.file(file)?;
        let start = *f.line_starts.get(line.checked_sub(1)?)?;
        let end = f
            .line_starts
            .get(line)
            .map(|e| e - 1)
            .unwrap_or(f.text.len());
        f.text.get(start..end).map(|s| s.trim_end_matches('\r'))
    }

    /// The source text a span covers.
    pub fn slice(&self, span: Span) -> Option<&str> {
        self.file(span.file)?
            .text
            .get(span.start as usize..span.end as usize)
    }

    pub fn path(&self, id: FileId) -> Option<&Path> {
        self.file(id).map(|f| f.path.as_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let mut map = SourceMap::default();
        let id = map.add("a.toml".into(), "a = 1\nb = \"é\" x\n".into());
        let p = map
            .position(Span {
                file: id,
                start: 6,
                end: 7,
            })
            .unwrap();
        assert_eq!((p.line, p.column), (2, 1));
        // 'x' comes after a two-byte character: byte 14, column 9.
        let p = map
            .position(Span {
                file: id,
                start: 15,
                end: 16,
            })
            .unwrap();
        assert_eq!((p.line, p.column), (2, 9));
        assert_eq!(map.line_text(id, 2), Some("b = \"é\" x"));
    }
}

//! `.dockerignore` with Docker's rules (moby/patternmatcher and its `ignorefile` reader),
//! which differ from `.gitignore` (the `ignore` crate) in ways users notice:
//! - a pattern is anchored at the context root: `foo` is `/foo`, never `a/foo`
//!   (write `**/foo` for any depth);
//! - `*` and `?` never cross `/`; `**` crosses any number of directories;
//! - a pattern that matches a directory excludes everything under it, yet a later `!`
//!   exception can take back a file inside that directory;
//! - patterns are cleaned as paths: `./a`, `/a`, `a/` and `a//b/..` are `a`;
//! - the last matching line wins.
//!
//! `Dockerfile.dockerignore` beside a Dockerfile named `Dockerfile` (or `X.dockerignore`
//! beside `X`) replaces the context's `.dockerignore`.

use std::path::{Path, PathBuf};

use regex::Regex;

#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    #[error("{file}:{line}: invalid pattern {pattern:?}: {why}")]
    BadPattern {
        file: String,
        line: usize,
        pattern: String,
        #[source]
        why: PatternError,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why one pattern is not valid.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    #[error("an exception (!) needs a pattern")]
    EmptyException,
    #[error("a trailing \\ escapes nothing")]
    TrailingBackslash,
    #[error("unterminated [ character class")]
    UnterminatedClass,
    /// The regex crate's message is several lines; its last one says what is wrong.
    #[error("{}", source.to_string().lines().last().unwrap_or_default().trim())]
    Regex { source: regex::Error },
}

/// The patterns of one ignore file, ready to match context-relative paths.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    /// Where the patterns came from (for messages); empty when built from a list.
    pub file: String,
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    exclusion: bool,
    cleaned: String,
    kind: MatchKind,
}

#[derive(Debug, Clone)]
enum MatchKind {
    Exact,
    /// `dir/**`: everything under `dir/`.
    Prefix(String),
    /// `**…`: paths ending with the rest (and `**/x` also `x`).
    Suffix(String),
    Regex(Regex),
}

/// Go's `path.Clean` for `/`-separated paths.
pub fn clean_path(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// The ignore file for a build: `<Dockerfile>.dockerignore` beside the Dockerfile when it
/// exists, else `.dockerignore` at the context root; `None` when neither does.
pub fn find(context: &Path, dockerfile: Option<&Path>) -> Option<PathBuf> {
    let specific = dockerfile.and_then(|d| {
        let name = d.file_name()?.to_str()?;
        Some(d.with_file_name(format!("{name}.dockerignore")))
    });
    specific.into_iter().chain([context.join(".dockerignore")]).find(|p| p.is_file())
}

/// Loads the ignore file [`find`] picks; an empty matcher when there is none.
pub fn load(context: &Path, dockerfile: Option<&Path>) -> Result<DockerIgnore, IgnoreError> {
    let Some(path) = find(context, dockerfile) else { return Ok(DockerIgnore::default()) };
    let text = std::fs::read(&path).map_err(|source| IgnoreError::Read { path: path.clone(), source })?;
    DockerIgnore::parse(&String::from_utf8_lossy(&text), &path.display().to_string())
}

impl DockerIgnore {
    /// Parses an ignore file's text as Docker's `ignorefile.ReadAll` reads it: `#` lines
    /// are comments, lines are trimmed, blank ones skipped, each pattern cleaned and a
    /// leading `/` dropped.
    pub fn parse(text: &str, file: &str) -> Result<DockerIgnore, IgnoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            if raw.starts_with('#') {
                continue;
            }
            let mut p = raw.trim();
            if p.is_empty() {
                continue;
            }
            let exclusion = p.starts_with('!');
            if exclusion {
                p = p[1..].trim();
            }
            let bad = |why: PatternError| IgnoreError::BadPattern {
                file: file.to_string(),
                line: i + 1,
                pattern: raw.trim().to_string(),
                why,
            };
            if p.is_empty() {
                return Err(bad(PatternError::EmptyException));
            }
            let mut cleaned = clean_path(p);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            let kind = compile(&cleaned).map_err(bad)?;
            patterns.push(Pattern { exclusion, cleaned, kind });
        }
        Ok(DockerIgnore { file: file.to_string(), patterns })
    }

    /// Whether any pattern is an exception (`!`): then excluded directories must still be
    /// walked, since something inside may come back.
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `path` (relative to the context root, `/`-separated) is left out: the last
    /// pattern matching it or one of its parent directories decides.
    pub fn excludes(&self, path: &str) -> bool {
        let file = clean_path(path.trim_start_matches('/'));
        if file == "." {
            return false;
        }
        let parents: Vec<&str> = match file.rfind('/') {
            Some(i) => file[..i].split('/').collect(),
            None => Vec::new(),
        };
        let mut matched = false;
        for p in &self.patterns {
            // An exception can only change an excluded path and vice versa.
            if p.exclusion != matched {
                continue;
            }
            let mut hit = p.matches(&file);
            if !hit {
                hit = (1..=parents.len()).any(|n| p.matches(&parents[..n].join("/")));
            }
            if hit {
                matched = !p.exclusion;
            }
        }
        matched
    }
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            MatchKind::Exact => path == self.cleaned,
            MatchKind::Prefix(prefix) => path.starts_with(prefix.as_str()),
            MatchKind::Suffix(suffix) => {
                path.ends_with(suffix.as_str()) || suffix.strip_prefix('/').is_some_and(|s| path == s)
            }
            MatchKind::Regex(re) => re.is_match(path),
        }
    }
}

/// patternmatcher's translation of a pattern to a match rule.
fn compile(pattern: &str) -> Result<MatchKind, PatternError> {
    validate(pattern)?;
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let mut re = String::from("^");
    let mut kind = Kind::Exact;
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    let mut first = true;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        match ch {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i == chars.len() {
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        re.push_str(".*");
                        kind = Kind::Regex;
                    }
                } else {
                    re.push_str("(.*/)?");
                    kind = Kind::Regex;
                }
                if first {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                kind = Kind::Regex;
            }
            '?' => {
                re.push_str("[^/]");
                kind = Kind::Regex;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                re.push('\\');
                re.push(ch);
            }
            '\\' => match chars.get(i) {
                Some(&n) => {
                    i += 1;
                    re.push_str(&regex::escape(&n.to_string()));
                    kind = Kind::Regex;
                }
                None => re.push_str("\\\\"),
            },
            '[' | ']' => {
                re.push(ch);
                kind = Kind::Regex;
            }
            c => re.push(c),
        }
        first = false;
    }
    Ok(match kind {
        Kind::Exact => MatchKind::Exact,
        Kind::Prefix => MatchKind::Prefix(pattern[..pattern.len() - 2].to_string()),
        Kind::Suffix => MatchKind::Suffix(pattern[2..].to_string()),
        Kind::Regex => {
            re.push('$');
            MatchKind::Regex(Regex::new(&re).map_err(|source| PatternError::Regex { source })?)
        }
    })
}

/// The syntax errors Go's `filepath.Match` reports: a trailing `\`, an unclosed `[`.
fn validate(pattern: &str) -> Result<(), PatternError> {
    let mut chars = pattern.chars();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.next().is_none() => return Err(PatternError::TrailingBackslash),
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            _ => {}
        }
    }
    if in_class {
        return Err(PatternError::UnterminatedClass);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ig(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text, ".dockerignore").unwrap()
    }

    #[test]
    fn clean_path_is_gos() {
        for (input, want) in [
            ("", "."),
            ("a/", "a"),
            ("./a", "a"),
            ("/a", "/a"),
            ("a//b", "a/b"),
            ("a/b/..", "a"),
            ("../a", "../a"),
            ("/../a", "/a"),
            ("a/../..", ".."),
            ("/", "/"),
        ] {
            assert_eq!(clean_path(input), want, "{input:?}");
        }
    }

    #[test]
    fn patterns_are_anchored_at_the_root_unlike_gitignore() {
        let d = ig("foo\n");
        assert!(d.excludes("foo"));
        assert!(d.excludes("foo/bar.txt"), "a matched directory excludes its contents");
        assert!(!d.excludes("a/foo"), "gitignore would exclude a/foo; Docker does not");
        let d = ig("**/foo\n");
        assert!(d.excludes("a/b/foo") && d.excludes("foo") && d.excludes("a/foo/x"));
        assert!(!d.excludes("a/xfoo"));
    }

    #[test]
    fn star_stays_in_one_directory_and_double_star_crosses() {
        let d = ig("*.md\nsrc/*/gen\ndocs/**\n**/*.log\na/**/z\n");
        assert!(d.excludes("README.md"));
        assert!(!d.excludes("docs2/README.md"), "*.md is only the root");
        assert!(d.excludes("src/x/gen") && !d.excludes("src/x/y/gen"));
        assert!(d.excludes("docs/a/b") && !d.excludes("docs"), "docs/** is what is under docs");
        assert!(d.excludes("x/y/z.log") && d.excludes("z.log"));
        assert!(d.excludes("a/z") && d.excludes("a/b/c/z"));
    }

    #[test]
    fn exceptions_reinclude_inside_excluded_directories_and_the_last_match_wins() {
        let d = ig("node_modules\n!node_modules/keep/**\n*.txt\n!important.txt\n");
        assert!(d.excludes("node_modules/x/index.js"));
        assert!(
            !d.excludes("node_modules/keep/a.js"),
            "gitignore cannot re-include inside an excluded directory; Docker can"
        );
        assert!(d.excludes("notes.txt") && !d.excludes("important.txt"));
        assert!(d.has_exceptions());
        let d = ig("!a.txt\n*.txt\n");
        assert!(d.excludes("a.txt"), "a later pattern overrides an earlier exception");
    }

    #[test]
    fn patterns_are_cleaned_and_leading_slashes_dropped() {
        let d = ig("/build/\n./tmp//x\n  # not a comment: leading space\n#comment\n\n  spaced  \na/b/../c\n");
        assert!(d.excludes("build/out") && d.excludes("tmp/x") && d.excludes("spaced") && d.excludes("a/c"));
        assert!(d.excludes("# not a comment: leading space"), "only lines starting with # are comments");
        assert!(!d.excludes("comment") && !d.excludes("a/b"));
        assert!(!d.excludes("."), "the context root itself is never excluded");
    }

    #[test]
    fn character_classes_escapes_and_bad_patterns() {
        let d = ig("file[0-9].txt\nq\\?\nx.y\n");
        assert!(d.excludes("file3.txt") && !d.excludes("filex.txt"));
        assert!(d.excludes("q?") && !d.excludes("qa"));
        assert!(d.excludes("x.y") && !d.excludes("xzy"), "a dot is literal");
        let e = DockerIgnore::parse("ok\n[abc\n", ".dockerignore").unwrap_err();
        assert_eq!(e.to_string(), ".dockerignore:2: invalid pattern \"[abc\": unterminated [ character class");
        assert!(DockerIgnore::parse("!\n", "x").is_err());
        assert!(DockerIgnore::parse("a\\\n", "x").is_err());
    }

    #[test]
    fn the_dockerfile_specific_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path();
        std::fs::write(ctx.join(".dockerignore"), "from-context\n").unwrap();
        std::fs::create_dir(ctx.join("build")).unwrap();
        let df = ctx.join("build/app.Dockerfile");
        assert_eq!(find(ctx, Some(&df)), Some(ctx.join(".dockerignore")));
        std::fs::write(ctx.join("build/app.Dockerfile.dockerignore"), "specific\n").unwrap();
        let d = load(ctx, Some(&df)).unwrap();
        assert!(d.excludes("specific") && !d.excludes("from-context"));
        assert!(load(&ctx.join("build"), None).unwrap().is_empty());
    }
}

//! Variable substitution as BuildKit's shell lexer does it: quotes, the escape character,
//! `$VAR`, `${VAR}`, `${VAR:-x}`/`${VAR-x}`, `${VAR:+x}`/`${VAR+x}`, `${VAR:?msg}`/`${VAR?msg}`,
//! `${VAR#pat}`/`${VAR##pat}`, `${VAR%pat}`/`${VAR%%pat}` and `${VAR/pat/repl}`/`${VAR//pat/repl}`
//! (patterns with `*` and `?`). Anything else after a name (`${VAR=x}`, …) is an error, as in
//! BuildKit. This is not a shell: `$(…)`, arithmetic and globbing are left to `RUN`.

use std::collections::BTreeSet;

/// What went wrong while substituting one word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubstError {
    #[error("syntax error: missing '}}' in {word:?}")]
    MissingBrace { word: String },
    #[error("syntax error: bad substitution in {word:?}")]
    BadSubstitution { word: String },
    #[error("unsupported modifier ({modifier}) in substitution in {word:?}")]
    UnsupportedModifier { modifier: String, word: String },
    #[error("unexpected end of statement while looking for matching {quote} in {word:?}")]
    UnterminatedQuote { quote: &'static str, word: String },
    #[error("{name}: {message}")]
    Required { name: String, message: String },
    #[error("invalid pattern ({pattern}) in substitution: invalid escape '\\{escaped}'")]
    BadPattern { pattern: String, escaped: String },
    #[error("syntax error: missing '/' in ${{}} in {word:?}")]
    MissingSlash { word: String },
    #[error("substitutions nested more than {MAX_DEPTH} deep in {word:?}")]
    TooDeep { word: String },
}

/// How deeply `${…}` may nest (the walker recurses).
pub const MAX_DEPTH: usize = 64;

/// The result of substituting one word: the text, its shell-style split into words (quotes
/// keep spaces), and the names that were looked up and found (for cache keys and for the
/// "build args it uses").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expanded {
    pub value: String,
    pub words: Vec<String>,
    pub matched: BTreeSet<String>,
}

/// How to treat quotes, escapes and unknown names. The default is what Dockerfile
/// instructions get: quotes and escapes are processed, unset names expand to "".
#[derive(Debug, Clone, Copy)]
pub struct Lexer {
    pub escape: char,
    /// Keep quote characters in the output (still honouring what they quote).
    pub raw_quotes: bool,
    /// Keep escape characters in the output.
    pub raw_escapes: bool,
    /// Treat quotes as ordinary characters (heredoc bodies).
    pub skip_quotes: bool,
    /// Leave `$NAME` of an unset name as written.
    pub skip_unset: bool,
}

impl Lexer {
    pub fn new(escape: char) -> Lexer {
        Lexer { escape, raw_quotes: false, raw_escapes: false, skip_quotes: false, skip_unset: false }
    }

    /// Substitutes `word`, looking names up with `env` (`None`: unset).
    pub fn process(&self, word: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Expanded, SubstError> {
        let mut w =
            Walker { lx: *self, chars: word.chars().collect(), pos: 0, env, word, matched: BTreeSet::new(), depth: 0 };
        let (value, words) = w.until(None, self.raw_escapes)?;
        Ok(Expanded { value, words, matched: w.matched })
    }

    /// Substitutes with a fixed list of `(name, value)` pairs, the last one winning.
    pub fn process_with(&self, word: &str, vars: &[(String, String)]) -> Result<Expanded, SubstError> {
        self.process(word, &|name| vars.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }
}

struct Walker<'a> {
    lx: Lexer,
    chars: Vec<char>,
    pos: usize,
    env: &'a dyn Fn(&str) -> Option<String>,
    word: &'a str,
    matched: BTreeSet<String>,
    depth: usize,
}

/// Builds the shell-style word list next to the plain result.
#[derive(Default)]
struct Words {
    words: Vec<String>,
    word: String,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }
    fn add_raw_char(&mut self, ch: char) {
        self.word.push(ch);
        self.in_word = true;
    }
    fn add_str(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }
    fn add_raw_str(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }
    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(self.word);
        }
        self.words
    }
}

impl Walker<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }
    fn word(&self) -> String {
        self.word.chars().take(200).collect()
    }

    /// Processes up to `stop` (consumed) or the end of the input.
    fn until(&mut self, stop: Option<char>, raw_escapes: bool) -> Result<(String, Vec<String>), SubstError> {
        let mut out = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.pos += 1;
                return Ok((out, words.finish()));
            }
            if ch == '$' {
                let v = self.dollar()?;
                out.push_str(&v);
                words.add_str(&v);
            } else if !self.lx.skip_quotes && (ch == '\'' || ch == '"') {
                let v = if ch == '\'' { self.single_quote()? } else { self.double_quote(raw_escapes)? };
                out.push_str(&v);
                words.add_raw_str(&v);
            } else {
                self.pos += 1;
                if ch == self.lx.escape {
                    if raw_escapes {
                        words.add_raw_char(ch);
                        out.push(ch);
                    }
                    let Some(escaped) = self.next() else { break };
                    words.add_raw_char(escaped);
                    out.push(escaped);
                } else {
                    words.add_char(ch);
                    out.push(ch);
                }
            }
        }
        match stop {
            Some('}') => Err(SubstError::MissingBrace { word: self.word() }),
            Some('/') => Err(SubstError::MissingSlash { word: self.word() }),
            Some(_) => Err(SubstError::BadSubstitution { word: self.word() }),
            None => Ok((out, words.finish())),
        }
    }

    fn single_quote(&mut self) -> Result<String, SubstError> {
        let mut out = String::new();
        let open = self.next();
        if self.lx.raw_quotes {
            out.extend(open);
        }
        loop {
            match self.next() {
                None => return Err(SubstError::UnterminatedQuote { quote: "single-quote", word: self.word() }),
                Some('\'') => {
                    if self.lx.raw_quotes {
                        out.push('\'');
                    }
                    return Ok(out);
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quote(&mut self, raw_escapes: bool) -> Result<String, SubstError> {
        let mut out = String::new();
        let open = self.next();
        if self.lx.raw_quotes {
            out.extend(open);
        }
        loop {
            match self.peek() {
                None => return Err(SubstError::UnterminatedQuote { quote: "double-quote", word: self.word() }),
                Some('"') => {
                    self.pos += 1;
                    if self.lx.raw_quotes {
                        out.push('"');
                    }
                    return Ok(out);
                }
                Some('$') => {
                    let v = self.dollar()?;
                    out.push_str(&v);
                }
                Some(mut ch) => {
                    self.pos += 1;
                    if ch == self.lx.escape {
                        if raw_escapes {
                            out.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.lx.escape => {
                                ch = n;
                                self.pos += 1;
                            }
                            Some(_) => {}
                        }
                    }
                    out.push(ch);
                }
            }
        }
    }

    fn lookup(&mut self, name: &str) -> Option<String> {
        let v = (self.env)(name);
        if v.is_some() {
            self.matched.insert(name.to_string());
        }
        v
    }

    fn dollar(&mut self) -> Result<String, SubstError> {
        if self.depth >= MAX_DEPTH {
            return Err(SubstError::TooDeep { word: self.word() });
        }
        self.depth += 1;
        let result = self.dollar_inner();
        self.depth -= 1;
        result
    }

    fn dollar_inner(&mut self) -> Result<String, SubstError> {
        self.pos += 1; // '$'
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(match self.lookup(&name) {
                Some(v) => v,
                None if self.lx.skip_unset => format!("${name}"),
                None => String::new(),
            });
        }
        self.pos += 1; // '{'
        match self.peek() {
            None => return Err(SubstError::MissingBrace { word: self.word() }),
            Some('{' | '}' | ':') => return Err(SubstError::BadSubstitution { word: self.word() }),
            _ => {}
        }
        let name = self.name();
        let Some(mut ch) = self.next() else { return Err(SubstError::MissingBrace { word: self.word() }) };
        let mut modifier = ch.to_string();
        match ch {
            '}' => Ok(match self.lookup(&name) {
                Some(v) => v,
                None if self.lx.skip_unset => format!("${{{name}}}"),
                None => String::new(),
            }),
            ':' | '+' | '-' | '?' | '#' | '%' => {
                let null_is_unset = ch == ':';
                if null_is_unset {
                    let Some(c) = self.next() else { return Err(SubstError::MissingBrace { word: self.word() }) };
                    ch = c;
                    modifier.push(c);
                }
                let raw = ch == '#' || ch == '%';
                let (word, _) = self.until(Some('}'), raw)?;
                let value = self.lookup(&name);
                if self.lx.skip_unset && value.is_none() {
                    return Ok(format!("${{{name}{modifier}{word}}}"));
                }
                let unset = value.is_none() || (null_is_unset && value.as_deref() == Some(""));
                match ch {
                    '-' => Ok(if unset { word } else { value.unwrap_or_default() }),
                    '+' => Ok(if unset { String::new() } else { word }),
                    '?' => {
                        let default_msg = match value {
                            None => "is not allowed to be unset",
                            Some(_) if unset => "is not allowed to be empty",
                            Some(v) => return Ok(v),
                        };
                        let message = if word.is_empty() { default_msg.to_string() } else { word };
                        Err(SubstError::Required { name, message })
                    }
                    '#' | '%' if !null_is_unset => {
                        let (greedy, pattern) = match word.strip_prefix(ch) {
                            Some(rest) => (true, rest.to_string()),
                            None => (false, word),
                        };
                        let pat = Pattern::compile(&pattern)?;
                        let value = value.unwrap_or_default();
                        Ok(if ch == '#' { pat.trim_prefix(&value, greedy) } else { pat.trim_suffix(&value, greedy) })
                    }
                    _ => Err(SubstError::UnsupportedModifier { modifier, word: self.word() }),
                }
            }
            '/' => {
                let all = self.peek() == Some('/');
                if all {
                    self.pos += 1;
                }
                let (pattern, _) = self.until(Some('/'), true)?;
                let (replacement, _) = self.until(Some('}'), true)?;
                let value = self.lookup(&name);
                let Some(value) = value else {
                    return Ok(if self.lx.skip_unset {
                        format!("${{{name}/{pattern}/{replacement}}}")
                    } else {
                        String::new()
                    });
                };
                Ok(Pattern::compile(&pattern)?.replace(&value, &replacement, all))
            }
            _ => Err(SubstError::UnsupportedModifier { modifier, word: self.word() }),
        }
    }

    /// A name: letters, digits and `_`; or all digits; or one special parameter.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    name.push(d);
                    self.pos += 1;
                }
                return name;
            }
            if name.is_empty() && "@*#?-$!0".contains(ch) {
                self.pos += 1;
                return ch.to_string();
            }
            if !ch.is_alphanumeric() && ch != '_' {
                break;
            }
            name.push(ch);
            self.pos += 1;
        }
        name
    }
}

/// A shell pattern of `${VAR#…}`, `${VAR%…}` and `${VAR/…/…}`: `*` any run, `?` one
/// character, `\` makes `*`, `?` and `\` literal (and is dropped before `}` and `/`).
#[derive(Debug)]
struct Pattern(Vec<Tok>);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Star,
    Any,
    Lit(char),
}

impl Pattern {
    fn compile(p: &str) -> Result<Pattern, SubstError> {
        let mut toks = Vec::new();
        let mut it = p.chars().peekable();
        while let Some(c) = it.next() {
            toks.push(match c {
                '*' => Tok::Star,
                '?' => Tok::Any,
                '\\' => match it.peek() {
                    Some('}' | '/') => continue,
                    Some(&n @ ('*' | '?' | '\\')) => {
                        it.next();
                        Tok::Lit(n)
                    }
                    other => {
                        return Err(SubstError::BadPattern {
                            pattern: p.to_string(),
                            escaped: other.map(|c| c.to_string()).unwrap_or_default(),
                        })
                    }
                },
                c => Tok::Lit(c),
            });
        }
        Ok(Pattern(toks))
    }

    /// The pattern as a regular expression (linear time, whatever the input), `*` greedy
    /// or not, optionally anchored at the start; `reversed` builds it for the reversed
    /// string (to find suffixes).
    fn regex(&self, greedy: bool, anchored: bool, reversed: bool) -> regex::Regex {
        let mut re = String::from(if anchored { "^(?:" } else { "(?:" });
        let mut push = |t: &Tok| match t {
            Tok::Star => re.push_str(if greedy { ".*" } else { ".*?" }),
            Tok::Any => re.push('.'),
            Tok::Lit(c) => re.push_str(&regex::escape(&c.to_string())),
        };
        if reversed {
            self.0.iter().rev().for_each(&mut push);
        } else {
            self.0.iter().for_each(&mut push);
        }
        re.push(')');
        regex::Regex::new(&re).expect("escaped literals, . and .* always compile")
    }

    fn trim_prefix(&self, value: &str, greedy: bool) -> String {
        match self.regex(greedy, true, false).find(value) {
            Some(m) => value[m.end()..].to_string(),
            None => value.to_string(),
        }
    }

    fn trim_suffix(&self, value: &str, greedy: bool) -> String {
        let reversed: String = value.chars().rev().collect();
        match self.regex(greedy, true, true).find(&reversed) {
            Some(m) => reversed[m.end()..].chars().rev().collect(),
            None => value.to_string(),
        }
    }

    fn replace(&self, value: &str, replacement: &str, all: bool) -> String {
        let re = self.regex(true, false, false);
        let with = regex::NoExpand(replacement);
        if all {
            re.replace_all(value, with).into_owned()
        } else {
            re.replace(value, with).into_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn sub(word: &str, pairs: &[(&str, &str)]) -> Result<String, SubstError> {
        Lexer::new('\\').process_with(word, &vars(pairs)).map(|e| e.value)
    }

    #[test]
    fn plain_names_braces_and_literal_dollars() {
        let env = [("PWD", "/home"), ("SHELL", "bash"), ("KOREAN", "한국어"), ("NULL", "")];
        assert_eq!(sub("he$PWD", &env).unwrap(), "he/home");
        assert_eq!(sub("he${PWD}x", &env).unwrap(), "he/homex");
        assert_eq!(sub("he$KOREAN", &env).unwrap(), "he한국어");
        assert_eq!(sub("$", &env).unwrap(), "$");
        assert_eq!(sub("a$ b", &env).unwrap(), "a$ b");
        assert_eq!(sub("$UNSET.x", &env).unwrap(), ".x");
        assert_eq!(sub("$PWD-x", &env).unwrap(), "/home-x");
        assert_eq!(sub("${PWD}${SHELL}", &env).unwrap(), "/homebash");
        // digits and special parameters are names that are never set
        assert_eq!(sub("a$1b", &env).unwrap(), "ab");
        assert_eq!(sub("a$@b", &env).unwrap(), "ab");
    }

    #[test]
    fn quotes_and_escapes() {
        let env = [("X", "v")];
        assert_eq!(sub("'$X'", &env).unwrap(), "$X");
        assert_eq!(sub("\"$X\"", &env).unwrap(), "v");
        assert_eq!(sub("\\$X", &env).unwrap(), "$X");
        assert_eq!(sub("\"\\$X\"", &env).unwrap(), "$X");
        assert_eq!(sub("\"a\\b\"", &env).unwrap(), "a\\b", "a backslash stays before ordinary chars in \"\"");
        assert_eq!(sub("a\\ b", &env).unwrap(), "a b");
        assert_eq!(sub("'a\\b'", &env).unwrap(), "a\\b");
        assert_eq!(sub("ab\\", &env).unwrap(), "ab", "an escape at the end vanishes");
        assert!(matches!(sub("'abc", &env), Err(SubstError::UnterminatedQuote { .. })));
        assert!(matches!(sub("\"abc", &env), Err(SubstError::UnterminatedQuote { .. })));
        let tick = Lexer::new('`');
        assert_eq!(tick.process_with("a`$X\\b", &vars(&env)).unwrap().value, "a$X\\b");
    }

    #[test]
    fn defaults_alternatives_and_required() {
        let env = [("FOO", "xxx"), ("BAR", "")];
        assert_eq!(sub("${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}", &env).unwrap(), "xxx  ccc");
        assert_eq!(sub("${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}", &env).unwrap(), "xxx bbb ccc");
        assert_eq!(sub("${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}", &env).unwrap(), "aaa bbb ");
        assert_eq!(sub("${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}", &env).unwrap(), "aaa  ");
        assert_eq!(sub("${BAZ:-$FOO/x}", &env).unwrap(), "xxx/x", "defaults are substituted too");
        assert_eq!(sub("${BAZ:-'a b'}", &env).unwrap(), "a b");
        assert_eq!(sub("${FOO?aaa}", &env).unwrap(), "xxx");
        assert_eq!(sub("${BAR?bbb}", &env).unwrap(), "");
        assert_eq!(sub("${BAZ?must be set}", &env).unwrap_err().to_string(), "BAZ: must be set");
        assert_eq!(sub("${BAR:?}", &env).unwrap_err().to_string(), "BAR: is not allowed to be empty");
        assert_eq!(sub("${BAZ:?}", &env).unwrap_err().to_string(), "BAZ: is not allowed to be unset");
    }

    #[test]
    fn malformed_substitutions_are_errors() {
        for bad in [
            "${FOO=aaa}",
            "${FOO=:aaa}",
            "${FOO=}",
            "${}",
            "${:x}",
            "${{x}",
            "${FOO",
            "${FOO:-x",
            "${FOO//ww}",
            "${FOO//}",
        ] {
            assert!(sub(bad, &[("FOO", "xxyy")]).is_err(), "{bad} should fail");
        }
        assert!(matches!(sub("${FOO", &[]), Err(SubstError::MissingBrace { .. })));
    }

    #[test]
    fn prefix_and_suffix_patterns() {
        let env = [("FOO", "xxyy")];
        assert_eq!(sub("${FOO#*x*y}", &env).unwrap(), "y");
        assert_eq!(sub("${FOO#*}", &env).unwrap(), "xxyy");
        assert_eq!(sub("${FOO##*x}", &env).unwrap(), "yy");
        assert_eq!(sub("${FOO#}", &env).unwrap(), "xxyy");
        assert_eq!(sub("${FOO%y}", &env).unwrap(), "xxy");
        assert_eq!(sub("${FOO%%y*}", &env).unwrap(), "xx");
        assert_eq!(sub("${FOO%y*}", &env).unwrap(), "xxy");
        assert_eq!(sub("${FOO#$BAR}", &[("FOO", "xxyy"), ("BAR", "x")]).unwrap(), "xyy");
        assert_eq!(sub("${FOO#?\\?}", &[("FOO", "???y")]).unwrap(), "?y");
        assert_eq!(sub("${FOO%%\\**}", &[("FOO", "xx**")]).unwrap(), "xx");
        assert_eq!(sub("${FOO%%\\**\\*}", &[("FOO", "a***yy*")]).unwrap(), "a");
        assert_eq!(sub("${ABC:-.}${FOO%x}${ABC:-.}", &env).unwrap(), ".xxyy.");
        assert!(matches!(sub("${FOO#\\x}", &env), Err(SubstError::BadPattern { .. })));
        // the release-file idiom from BuildKit's docs
        let platform = [("VERSION", "v1.2.3"), ("TARGETOS", "linux"), ("TARGETARCH", "arm"), ("TARGETVARIANT", "v7")];
        let word = "x-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tgz";
        assert_eq!(sub(word, &platform).unwrap(), "x-v1.2.3.linux-arm-v7.tgz");
        assert_eq!(sub(word, &platform[..3]).unwrap(), "x-v1.2.3.linux-arm.tgz");
    }

    #[test]
    fn deep_nesting_is_an_error_and_patterns_stay_fast() {
        let deep = "${A:-".repeat(10_000) + &"}".repeat(10_000);
        assert!(matches!(sub(&deep, &[]), Err(SubstError::TooDeep { .. })));
        let ok = "${A:-".repeat(20) + "x" + &"}".repeat(20);
        assert_eq!(sub(&ok, &[]).unwrap(), "x");
        // a pattern that backtracking would take ages on
        let long = "a".repeat(5_000);
        let pat = "${V//*a*a*a*a*a*a*a*b/x}";
        assert_eq!(sub(pat, &[("V", &long)]).unwrap(), long);
    }

    #[test]
    fn replacements() {
        let foo = |v: &str, extra: &[(&str, &str)], w: &str| {
            let mut e = vec![("FOO", v)];
            e.extend_from_slice(extra);
            sub(w, &e).unwrap()
        };
        assert_eq!(
            foo("/foo*/*/*.txt", &[("NEEDLE", "\\*/")], "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}"),
            "/foo.*/*.txt - /foo..*.txt"
        );
        assert_eq!(foo("/tmp/tmp/bar.txt", &[("N", "/tmp")], "${FOO/$N/} - ${FOO//$N/}"), "/tmp/bar.txt - /bar.txt");
        assert_eq!(
            foo("/a/foo/b/c.txt", &[("N", "/?/"), ("R", "/")], "${FOO/$N/$R} - ${FOO//$N/$R}"),
            "/foo/b/c.txt - /foo/c.txt"
        );
        assert_eq!(foo("/tmp/foo.txt", &[], "${FOO//\\//\\/}"), "\\/tmp\\/foo.txt");
        assert_eq!(foo("xxyy", &[("BAR", "")], "${FOO/$BAR/ww}"), "wwxxyy");
        assert_eq!(foo("xxyy", &[], "${FOO///}"), "xxyy");
        assert_eq!(sub("${FOO///}", &[]).unwrap(), "");
    }

    #[test]
    fn words_split_after_substitution_but_not_inside_quotes() {
        let lx = Lexer::new('\\');
        let e = vars(&[("A", "x y"), ("E", "")]);
        assert_eq!(lx.process_with("a $A \"b c\" 'd'e", &e).unwrap().words, ["a", "x", "y", "b c", "de"]);
        assert_eq!(lx.process_with("  $E  ", &e).unwrap().words, Vec::<String>::new());
        assert_eq!(lx.process_with("a\\ b c", &e).unwrap().words, ["a b", "c"]);
    }

    #[test]
    fn matched_names_are_reported_and_unset_ones_can_be_kept() {
        let lx = Lexer::new('\\');
        let e = lx.process_with("$A ${B:-x} $C", &vars(&[("A", "1"), ("B", "")])).unwrap();
        assert_eq!(e.matched.into_iter().collect::<Vec<_>>(), ["A", "B"]);
        let keep = Lexer { skip_unset: true, ..lx };
        assert_eq!(keep.process_with("$A ${C} ${C:-d} $C", &vars(&[("A", "1")])).unwrap().value, "1 ${C} ${C:-d} $C");
        let raw = Lexer { raw_quotes: true, raw_escapes: true, ..lx };
        assert_eq!(raw.process_with("'a' \"b\\\"\" c\\ d", &[]).unwrap().words, ["'a'", "\"b\\\"\"", "c\\ d"]);
    }
}

//! Dockerfile text → typed instructions with line numbers, following BuildKit's parser:
//! parser directives (`# escape=`, `# syntax=`), line continuations (comment and blank lines
//! inside them dropped), heredocs, builder flags, shell and exec (JSON) forms. One function
//! per instruction turns the split line into its typed form.

use super::error::{syntax, unsupported, DockerfileError, ErrorKind};
use super::instruction::*;
use super::substitute::Lexer;

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq)]
pub struct Dockerfile {
    /// The name errors use (`Dockerfile`, `-` for stdin, …).
    pub file: String,
    /// The escape character (`\`, or `` ` `` from `# escape=`).
    pub escape: char,
    /// `# syntax=` names a frontend image; imgforge notes it and uses its own front end.
    pub syntax: Option<String>,
    pub instructions: Vec<Located>,
}

/// Every instruction keyword, lower-case.
pub const KEYWORDS: &[&str] = &[
    "add",
    "arg",
    "cmd",
    "copy",
    "entrypoint",
    "env",
    "expose",
    "from",
    "healthcheck",
    "label",
    "maintainer",
    "onbuild",
    "run",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

/// Parses `text`; `file` is the name errors report.
pub fn parse(text: &str, file: &str) -> Result<Dockerfile, DockerfileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let (escape, syntax_directive) = directives(&lines).map_err(|(line, k)| k.at(file, line, None))?;
    let mut p = Parser { file, escape, lines: &lines, next: 0 };
    let mut instructions = Vec::new();
    while let Some(located) = p.instruction()? {
        instructions.push(located);
    }
    if instructions.is_empty() {
        return Err(ErrorKind::Empty.at(file, 0, None));
    }
    if let Some(l) = instructions
        .iter()
        .take_while(|l| !matches!(l.instruction, Instruction::From(_)))
        .find(|l| !matches!(l.instruction, Instruction::Arg(_)))
    {
        let kw = l.instruction.keyword();
        return Err(ErrorKind::BeforeFrom(kw.into()).at(file, l.line, Some(kw)));
    }
    Ok(Dockerfile { file: file.to_string(), escape, syntax: syntax_directive, instructions })
}

/// Parses one `ONBUILD` trigger as stored in an image's `OnBuild` list, for a stage whose
/// base has triggers. `line` is where they fire (the `FROM`).
pub fn parse_trigger(expression: &str, file: &str, line: usize) -> Result<Located, DockerfileError> {
    let lines: Vec<&str> = expression.split_inclusive('\n').collect();
    let mut p = Parser { file, escape: '\\', lines: &lines, next: 0 };
    match p.instruction() {
        Ok(Some(mut l)) => {
            l.line = line;
            l.end_line = line;
            if matches!(l.instruction, Instruction::From(_) | Instruction::Onbuild(_)) {
                let kw = l.instruction.keyword();
                return Err(syntax(format!("{kw} isn't allowed as an ONBUILD trigger")).at(
                    file,
                    line,
                    Some("ONBUILD"),
                ));
            }
            Ok(l)
        }
        Ok(None) => Err(syntax("empty ONBUILD trigger in the base image").at(file, line, Some("ONBUILD"))),
        Err(mut e) => {
            e.at.line = line;
            Err(e)
        }
    }
}

/// Reads `# escape=` and `# syntax=` at the top of the file.
fn directives(lines: &[&str]) -> Result<(char, Option<String>), (usize, ErrorKind)> {
    let (mut escape, mut syntax_value) = (None, None);
    for (i, raw) in lines.iter().enumerate() {
        let Some((key, value)) = directive(trim_newline(raw).trim_start()) else { break };
        let slot = match key.as_str() {
            "escape" => {
                if escape.is_some() {
                    return Err((i + 1, syntax("only one escape parser directive can be used")));
                }
                match value.as_str() {
                    "\\" | "`" => escape = value.chars().next(),
                    _ => return Err((i + 1, syntax(format!("invalid escape token '{value}' does not match ` or \\")))),
                }
                continue;
            }
            "syntax" => &mut syntax_value,
            "check" => continue,
            _ => break,
        };
        if slot.is_some() {
            return Err((i + 1, syntax(format!("only one {key} parser directive can be used"))));
        }
        *slot = Some(value);
    }
    Ok((escape.unwrap_or('\\'), syntax_value))
}

/// `# key = value` with a letter-first alphanumeric key.
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix('#')?.trim_start();
    let key_len = rest.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(rest.len());
    let key = &rest[..key_len];
    if !key.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value = rest[key_len..].trim_start().strip_prefix('=')?.trim();
    (!value.is_empty()).then(|| (key.to_lowercase(), value.to_string()))
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn is_comment(raw: &str) -> bool {
    trim_newline(raw).trim_start().starts_with('#')
}

struct Parser<'a> {
    file: &'a str,
    escape: char,
    lines: &'a [&'a str],
    next: usize,
}

/// A logical line split into keyword, builder flags and the rest.
struct Split {
    keyword: String,
    flags: Vec<String>,
    args: String,
}

impl Parser<'_> {
    /// Strips a line-continuation escape: `(line, ends_here)`.
    fn continuation(&self, line: &str) -> (String, bool) {
        let trimmed = line.trim_end_matches([' ', '\t']);
        if let Some(body) = trimmed.strip_suffix(self.escape) {
            if body.is_empty() || !body.ends_with(self.escape) {
                return (body.to_string(), false);
            }
        }
        (line.to_string(), true)
    }

    fn err(&self, kind: ErrorKind, line: usize, keyword: Option<&str>) -> DockerfileError {
        kind.at(self.file, line, keyword)
    }

    /// The next instruction, with its heredoc bodies.
    fn instruction(&mut self) -> Result<Option<Located>, DockerfileError> {
        loop {
            let Some(raw) = self.lines.get(self.next) else { return Ok(None) };
            self.next += 1;
            let start = self.next;
            let first = trim_newline(raw).trim_start();
            let first = if first.starts_with('#') { "" } else { first };
            let (mut line, mut done) = self.continuation(first);
            if done && line.is_empty() {
                continue;
            }
            while !done {
                let Some(raw) = self.lines.get(self.next) else { break };
                self.next += 1;
                let l = trim_newline(raw);
                if is_comment(raw) || l.trim_start().is_empty() {
                    continue;
                }
                let (part, d) = self.continuation(l);
                line.push_str(&part);
                done = d;
            }
            let split = split_command(&line);
            let kw = split.keyword.to_uppercase();
            let mut heredocs = Vec::new();
            if can_have_heredocs(&split) {
                for (name, expand, chomp, fd) in heredoc_words(&line) {
                    heredocs.push(self.heredoc_body(name, expand, chomp, fd, start, &kw)?);
                }
            }
            let instruction = build(&split, heredocs, self.escape, &line)
                .map_err(|k| self.err(k, start, KEYWORDS.contains(&split.keyword.as_str()).then_some(kw.as_str())))?;
            return Ok(Some(Located {
                line: start,
                end_line: self.next,
                source: line.trim().to_string(),
                instruction,
            }));
        }
    }

    fn heredoc_body(
        &mut self,
        name: String,
        expand: bool,
        chomp: bool,
        fd: u32,
        start: usize,
        kw: &str,
    ) -> Result<Heredoc, DockerfileError> {
        let mut content = String::new();
        while let Some(raw) = self.lines.get(self.next) {
            self.next += 1;
            let candidate = trim_newline(raw);
            let candidate = if chomp { candidate.trim_start_matches('\t') } else { candidate };
            if candidate == name {
                return Ok(Heredoc { name, content, expand, chomp, fd });
            }
            content.push_str(raw);
        }
        Err(self.err(ErrorKind::UnterminatedHeredoc { name }, start, Some(kw)))
    }
}

/// `RUN`, `COPY`, `ADD` (and `ONBUILD` of them) in shell form may carry heredocs.
fn can_have_heredocs(split: &Split) -> bool {
    let (keyword, args) = if split.keyword == "onbuild" {
        let child = split_command(&split.args);
        (child.keyword, child.args)
    } else {
        (split.keyword.clone(), split.args.clone())
    };
    matches!(keyword.as_str(), "run" | "copy" | "add") && json_array(&args).is_none()
}

/// Splits off the keyword and the leading `--flags`.
fn split_command(line: &str) -> Split {
    let line = line.trim();
    let (keyword, rest) = match line.find(char::is_whitespace) {
        Some(i) => (&line[..i], line[i..].trim_start()),
        None => (line, ""),
    };
    let (args, flags) = extract_flags(rest);
    Split { keyword: keyword.to_lowercase(), flags, args: args.trim().to_string() }
}

/// BuildKit's builder-flag scanner: leading words starting with `--` (quotes and `\`
/// processed), up to the first other word or a bare `--`.
fn extract_flags(line: &str) -> (&str, Vec<String>) {
    let b = line.as_bytes();
    let mut flags = Vec::new();
    let mut pos = 0;
    loop {
        while pos < b.len() && b[pos].is_ascii_whitespace() {
            pos += 1;
        }
        if pos >= b.len() {
            return ("", flags);
        }
        if !line[pos..].starts_with("--") {
            return (&line[pos..], flags);
        }
        let mut word = Vec::new();
        let mut quote = None;
        while pos < b.len() {
            let c = b[pos];
            pos += 1;
            match quote {
                None if c.is_ascii_whitespace() => break,
                None if c == b'\'' || c == b'"' => quote = Some(c),
                Some(q) if c == q => quote = None,
                _ if c == b'\\' => {
                    if pos < b.len() {
                        word.push(b[pos]);
                        pos += 1;
                    }
                }
                _ => word.push(c),
            }
        }
        let word = String::from_utf8_lossy(&word).into_owned();
        if word == "--" {
            return (&line[pos..], flags);
        }
        flags.push(word);
    }
}

/// `(name, expand, chomp, fd)` of each `<<WORD` in the line, in order.
fn heredoc_words(line: &str) -> Vec<(String, bool, bool, u32)> {
    let raw = Lexer { raw_quotes: true, raw_escapes: true, skip_unset: true, ..Lexer::new('\\') };
    let words = raw.process_with(line, &[]).map(|e| e.words).unwrap_or_default();
    words.iter().filter_map(|w| heredoc_word(w)).collect()
}

/// Whether one word is `[N]<<[-]NAME`, and its parts.
pub(crate) fn heredoc_word(word: &str) -> Option<(String, bool, bool, u32)> {
    let digits = word.find(|c: char| !c.is_ascii_digit()).unwrap_or(word.len());
    let rest = word[digits..].strip_prefix("<<")?;
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    let fd = if digits == 0 { 0 } else { word[..digits].parse().ok()? };
    let plain = Lexer { skip_unset: true, ..Lexer::new('\\') };
    let words = plain.process_with(rest, &[]).ok()?.words;
    let [name] = words.as_slice() else { return None };
    let raw = Lexer { raw_quotes: true, ..plain }.process_with(rest, &[]).ok()?.words;
    let quotes = |s: &str| s.chars().filter(|c| *c == '\'' || *c == '"').count();
    let expand = raw.first().is_some_and(|r| quotes(r) == quotes(name));
    Some((name.clone(), expand, chomp, fd))
}

/// A JSON array of strings, BuildKit-style: the first JSON value of the text when it is an
/// array (trailing text ignored); `Some(Err)` when it holds something other than strings.
fn json_array(rest: &str) -> Option<Result<Vec<String>, ErrorKind>> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return None;
    }
    let value = serde_json::Deserializer::from_str(rest).into_iter::<serde_json::Value>().next()?.ok()?;
    let items = value.as_array()?;
    Some(
        items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| syntax("when using JSON array syntax, arrays must be comprised of strings only")),
    )
}

fn command_line(rest: &str) -> Result<CommandLine, ErrorKind> {
    match json_array(rest) {
        Some(items) => Ok(CommandLine::Exec(items?)),
        None => Ok(CommandLine::Shell(rest.to_string())),
    }
}

/// JSON array, else whitespace-separated words.
fn list(rest: &str) -> Result<Vec<String>, ErrorKind> {
    match json_array(rest) {
        Some(items) => items,
        None => {
            Ok(rest.split([' ', '\t', '\r', '\x0b', '\x0c']).filter(|s| !s.is_empty()).map(str::to_string).collect())
        }
    }
}

/// Words of `ENV`/`LABEL`/`ARG`: split on unquoted whitespace, quotes and escapes kept.
fn words(rest: &str, escape: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut blank_ok = false;
    let mut it = rest.chars().peekable();
    while let Some(ch) = it.next() {
        match quote {
            None if ch.is_whitespace() => {
                if blank_ok || !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                blank_ok = false;
                continue;
            }
            None if ch == '\'' || ch == '"' => {
                quote = Some(ch);
                blank_ok = true;
            }
            Some(q) if ch == q => quote = None,
            _ => {}
        }
        if ch == escape && quote != Some('\'') {
            match it.next() {
                Some(n) => {
                    word.push(ch);
                    word.push(n);
                }
                None => quote = None,
            }
            continue;
        }
        word.push(ch);
    }
    if blank_ok || !word.is_empty() {
        out.push(word);
    }
    out
}

/// `KEY=VALUE …`, or the legacy `KEY VALUE` (the rest of the line is the value).
fn name_values(rest: &str, escape: char, kw: &str) -> Result<Vec<KeyValue>, ErrorKind> {
    let ws = words(rest, escape);
    let Some(first) = ws.first() else { return Err(syntax(format!("{kw} requires at least one argument"))) };
    if !first.contains('=') {
        let mut parts = rest.splitn(2, char::is_whitespace);
        let key = parts.next().unwrap_or_default().to_string();
        let value = parts.next().map(str::trim_start).unwrap_or_default();
        if value.is_empty() {
            return Err(syntax(format!("{kw} must have two arguments")));
        }
        return Ok(vec![KeyValue { key, value: value.to_string() }]);
    }
    ws.iter()
        .map(|w| match w.split_once('=') {
            Some(("", _)) => Err(syntax(format!("{kw} names can not be blank"))),
            Some((k, v)) => Ok(KeyValue { key: k.to_string(), value: v.to_string() }),
            None => Err(syntax(format!("Syntax error - can't find = in {w:?}. Must be of the form: name=value"))),
        })
        .collect()
}

/// The builder flags of one instruction, checked against what it accepts.
struct Flags {
    given: Vec<(String, Option<String>)>,
}

impl Flags {
    /// Checks names (known, supported, not repeated unless `repeatable`).
    fn new(
        raw: &[String],
        instruction: &'static str,
        allowed: &'static [&'static str],
        repeatable: &[&str],
        unsupported_flags: &[(&str, &str)],
    ) -> Result<Flags, ErrorKind> {
        let mut given: Vec<(String, Option<String>)> = Vec::new();
        for f in raw {
            let body = f.strip_prefix("--").unwrap_or(f);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n.to_lowercase(), Some(v.to_string())),
                None => (body.to_lowercase(), None),
            };
            if let Some((_, hint)) = unsupported_flags.iter().find(|(n, _)| *n == name) {
                return Err(unsupported(format!("{instruction} --{name}"), *hint));
            }
            if !allowed.contains(&name.as_str()) {
                return Err(ErrorKind::UnknownFlag { instruction, flag: name, allowed });
            }
            if given.iter().any(|(n, _)| *n == name) && !repeatable.contains(&name.as_str()) {
                return Err(ErrorKind::DuplicateFlag { flag: name });
            }
            given.push((name, value));
        }
        Ok(Flags { given })
    }

    fn string(&self, name: &str) -> Result<Option<String>, ErrorKind> {
        match self.given.iter().find(|(n, _)| n == name) {
            None => Ok(None),
            Some((_, Some(v))) => Ok(Some(v.clone())),
            Some((_, None)) => Err(syntax(format!("missing a value on flag: --{name}"))),
        }
    }

    fn all(&self, name: &str) -> Result<Vec<String>, ErrorKind> {
        self.given
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone().ok_or_else(|| syntax(format!("missing a value on flag: --{name}"))))
            .collect()
    }

    fn bool(&self, name: &str) -> Result<bool, ErrorKind> {
        match self.given.iter().find(|(n, _)| n == name) {
            None => Ok(false),
            Some((_, None)) => Ok(true),
            Some((_, Some(v))) => match v.to_lowercase().as_str() {
                "true" | "" => Ok(true),
                "false" => Ok(false),
                _ => Err(syntax(format!("expecting boolean value for flag {name}, not: {v}"))),
            },
        }
    }
}

/// Dispatches one split line to its instruction's parser.
fn build(split: &Split, heredocs: Vec<Heredoc>, escape: char, line: &str) -> Result<Instruction, ErrorKind> {
    let args = split.args.as_str();
    let f = |kw, allowed, rep, uns| Flags::new(&split.flags, kw, allowed, rep, uns);
    let no_flags = |kw: &'static str| Flags::new(&split.flags, kw, &[], &[], &[]).map(|_| ());
    let one = |kw: &str| {
        if args.is_empty() {
            Err(syntax(format!("{kw} requires exactly one argument")))
        } else {
            Ok(args.to_string())
        }
    };
    Ok(match split.keyword.as_str() {
        "from" => parse_from(args, &f("FROM", &["platform"], &[], &[])?)?,
        "run" => parse_run(args, heredocs, &f("RUN", &["mount", "network", "security"], &["mount"], &[])?)?,
        "cmd" => {
            no_flags("CMD")?;
            Instruction::Cmd(command_line(args)?)
        }
        "entrypoint" => {
            no_flags("ENTRYPOINT")?;
            Instruction::Entrypoint(command_line(args)?)
        }
        "shell" => {
            no_flags("SHELL")?;
            match json_array(args) {
                Some(items) => {
                    let items = items?;
                    if items.is_empty() {
                        return Err(syntax("SHELL requires at least one argument"));
                    }
                    Instruction::Shell(items)
                }
                None => return Err(syntax(format!("SHELL requires the arguments to be in JSON form: {line}"))),
            }
        }
        "label" => {
            no_flags("LABEL")?;
            Instruction::Label(name_values(args, escape, "LABEL")?)
        }
        "env" => {
            no_flags("ENV")?;
            Instruction::Env(name_values(args, escape, "ENV")?)
        }
        "maintainer" => {
            no_flags("MAINTAINER")?;
            Instruction::Maintainer(one("MAINTAINER")?)
        }
        "user" => {
            no_flags("USER")?;
            Instruction::User(one("USER")?)
        }
        "workdir" => {
            no_flags("WORKDIR")?;
            Instruction::Workdir(one("WORKDIR")?)
        }
        "stopsignal" => {
            no_flags("STOPSIGNAL")?;
            Instruction::Stopsignal(one("STOPSIGNAL")?)
        }
        "expose" => {
            no_flags("EXPOSE")?;
            let ports: Vec<String> = args.split_whitespace().map(str::to_string).collect();
            if ports.is_empty() {
                return Err(syntax("EXPOSE requires at least one argument"));
            }
            Instruction::Expose(ports)
        }
        "volume" => {
            no_flags("VOLUME")?;
            let vols = list(args)?;
            if vols.is_empty() {
                return Err(syntax("VOLUME requires at least one argument"));
            }
            if vols.iter().any(|v| v.trim().is_empty()) {
                return Err(syntax("VOLUME specified can not be an empty string"));
            }
            Instruction::Volume(vols.into_iter().map(|v| v.trim().to_string()).collect())
        }
        "arg" => {
            no_flags("ARG")?;
            parse_arg(args, escape)?
        }
        "copy" => {
            let flags = f(
                "COPY",
                &["from", "chown", "chmod", "link", "exclude"],
                &["exclude"],
                &[("parents", "copy the directories one by one")],
            )?;
            let common = copy_common(args, heredocs, &flags, "COPY")?;
            Instruction::Copy(CopyFiles { common, from: flags.string("from")? })
        }
        "add" => {
            let flags = f(
                "ADD",
                &["chown", "chmod", "link", "exclude", "checksum"],
                &["exclude"],
                &[
                    ("keep-git-dir", "ADD of git repositories is not supported; clone in a RUN step"),
                    ("parents", "copy the directories one by one"),
                    ("unpack", "local archives are always unpacked, URLs never"),
                ],
            )?;
            let common = copy_common(args, heredocs, &flags, "ADD")?;
            Instruction::Add(AddFiles { common, checksum: flags.string("checksum")? })
        }
        "onbuild" => {
            no_flags("ONBUILD")?;
            parse_onbuild(args, heredocs, escape, line)?
        }
        "healthcheck" => parse_healthcheck(args, &split.flags)?,
        other => {
            return Err(ErrorKind::UnknownInstruction { name: other.to_uppercase(), suggestion: suggest(other) });
        }
    })
}

/// The closest instruction keyword within two edits, upper-case.
fn suggest(word: &str) -> Option<String> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
            }
            prev = cur;
        }
        prev[b.len()]
    }
    KEYWORDS.iter().map(|k| (distance(word, k), k)).filter(|(d, _)| *d <= 2).min().map(|(_, k)| k.to_uppercase())
}

fn parse_from(args: &str, flags: &Flags) -> Result<Instruction, ErrorKind> {
    let parts: Vec<&str> = args.split_whitespace().collect();
    let name = match parts.as_slice() {
        [_] => None,
        [_, as_, name] if as_.eq_ignore_ascii_case("as") => {
            let lower = name.to_lowercase();
            let mut chars = lower.chars();
            let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
                && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
            if !ok {
                return Err(syntax(format!(
                    "invalid name for build stage: {name:?}, name can't start with a number or contain symbols"
                )));
            }
            Some(lower)
        }
        _ => return Err(syntax("FROM requires either one or three arguments")),
    };
    Ok(Instruction::From(FromImage { image: parts[0].to_string(), name, platform: flags.string("platform")? }))
}

fn parse_run(args: &str, heredocs: Vec<Heredoc>, flags: &Flags) -> Result<Instruction, ErrorKind> {
    let mounts = flags.all("mount")?.iter().map(|m| parse_mount(m)).collect::<Result<Vec<_>, _>>()?;
    let network = match flags.string("network")?.as_deref() {
        None => None,
        Some("default") => Some(Network::Default),
        Some("none") => Some(Network::None),
        Some("host") => Some(Network::Host),
        Some(other) => {
            return Err(ErrorKind::BadFlag {
                flag: "network".into(),
                value: other.into(),
                why: "use default, none or host".into(),
            })
        }
    };
    match flags.string("security")?.as_deref() {
        None | Some("sandbox") => {}
        Some("insecure") => return Err(unsupported("RUN --security=insecure", "steps always run in the sandbox")),
        Some(other) => {
            return Err(ErrorKind::BadFlag { flag: "security".into(), value: other.into(), why: "use sandbox".into() })
        }
    }
    let command = command_line(args)?;
    if args.is_empty() {
        return Err(syntax("RUN requires at least one argument"));
    }
    Ok(Instruction::Run(Run { mounts, network, command, heredocs }))
}

/// One `--mount=` value: comma-separated `key=value` fields (CSV quoting honoured).
pub(crate) fn parse_mount(value: &str) -> Result<MountSpec, ErrorKind> {
    let bad = |why: String| ErrorKind::BadFlag { flag: "mount".into(), value: value.into(), why };
    let mut m = MountSpec {
        kind: MountKind::Bind,
        target: None,
        source: None,
        from: None,
        id: None,
        readonly: None,
        sharing: Sharing::Shared,
        required: false,
        mode: None,
        uid: None,
        gid: None,
        size: None,
        env: None,
    };
    let fields = csv_fields(value);
    // The type first: it decides the defaults the other keys change.
    for field in &fields {
        if let Some(("type", t)) = field.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
            m.kind = match t.to_lowercase().as_str() {
                "bind" => MountKind::Bind,
                "cache" => MountKind::Cache,
                "secret" => MountKind::Secret,
                "tmpfs" => MountKind::Tmpfs,
                "ssh" => return Err(unsupported("RUN --mount=type=ssh", "use a secret mount")),
                other => {
                    return Err(bad(format!("unsupported mount type {other:?}: use bind, cache, secret or tmpfs")))
                }
            };
        }
    }
    let boolean = |k: &str, v: Option<&str>| -> Result<bool, ErrorKind> {
        match v.map(str::to_lowercase).as_deref() {
            None | Some("true") | Some("1") => Ok(true),
            Some("false") | Some("0") => Ok(false),
            Some(o) => Err(bad(format!("invalid value {o:?} for {k}: use true or false"))),
        }
    };
    let number = |k: &str, v: &str, radix: u32| {
        u32::from_str_radix(v, radix).map_err(|_| bad(format!("invalid value {v:?} for {k}")))
    };
    for field in &fields {
        let (key, val) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_lowercase(), Some(v.trim())),
            None => (field.trim().to_lowercase(), None),
        };
        let need = || val.map(str::to_string).ok_or_else(|| bad(format!("{key} needs a value ({key}=…)")));
        match key.as_str() {
            "type" => {}
            "target" | "dst" | "destination" => m.target = Some(need()?),
            "source" | "src" => m.source = Some(need()?),
            "from" => m.from = Some(need()?),
            "id" => m.id = Some(need()?),
            "readonly" | "ro" => m.readonly = Some(boolean(&key, val)?),
            "readwrite" | "rw" => m.readonly = Some(!boolean(&key, val)?),
            "required" => m.required = boolean(&key, val)?,
            "sharing" => {
                m.sharing = match need()?.as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    o => return Err(bad(format!("unsupported sharing value {o:?}: use shared, private or locked"))),
                }
            }
            "mode" => m.mode = Some(number(&key, &need()?, 8)?),
            "uid" => m.uid = Some(number(&key, &need()?, 10)?),
            "gid" => m.gid = Some(number(&key, &need()?, 10)?),
            "size" => m.size = Some(parse_size(&need()?).ok_or_else(|| bad("invalid size".into()))?),
            "env" => m.env = Some(need()?),
            other => return Err(bad(format!("unexpected key {other:?} in {field:?}"))),
        }
    }
    let valid_keys: &[&str] = match m.kind {
        MountKind::Bind => &["from", "source", "readonly"],
        MountKind::Cache => &["from", "source", "readonly", "id", "sharing", "mode", "uid", "gid"],
        MountKind::Secret => &["id", "required", "mode", "uid", "gid", "env"],
        MountKind::Tmpfs => &["size"],
    };
    let set = [
        ("from", m.from.is_some()),
        ("source", m.source.is_some()),
        ("readonly", m.readonly.is_some()),
        ("id", m.id.is_some()),
        ("sharing", m.sharing != Sharing::Shared),
        ("mode", m.mode.is_some()),
        ("uid", m.uid.is_some()),
        ("gid", m.gid.is_some()),
        ("required", m.required),
        ("size", m.size.is_some()),
        ("env", m.env.is_some()),
    ];
    if let Some((k, _)) = set.iter().find(|(k, on)| *on && !valid_keys.contains(k)) {
        return Err(bad(format!("{k} is not an option of a {:?} mount", m.kind).to_lowercase()));
    }
    match m.kind {
        MountKind::Secret if m.id.is_none() && m.target.is_none() => {
            return Err(bad("a secret mount needs id= or target=".into()))
        }
        MountKind::Secret => {}
        _ if m.target.is_none() => return Err(bad("the mount needs target=".into())),
        _ => {}
    }
    Ok(m)
}

/// Splits on commas outside double quotes, removing the quotes (Go's CSV reader).
fn csv_fields(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                if let Some(f) = out.last_mut() {
                    f.push('"');
                }
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            c => {
                if let Some(f) = out.last_mut() {
                    f.push(c);
                }
            }
        }
    }
    out.into_iter().filter(|f| !f.trim().is_empty()).collect()
}

/// `1024`, `64k`, `10m`, `1g` (binary units, as Docker's RAMInBytes).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k') => (&s[..i], 1u64 << 10),
        (i, 'm') => (&s[..i], 1 << 20),
        (i, 'g') => (&s[..i], 1 << 30),
        (i, 't') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

fn parse_arg(args: &str, escape: char) -> Result<Instruction, ErrorKind> {
    let ws = words(args, escape);
    if ws.is_empty() {
        return Err(syntax("ARG requires at least one argument"));
    }
    ws.into_iter()
        .map(|w| match w.split_once('=') {
            Some(("", _)) => Err(syntax("ARG names can not be blank")),
            Some((k, v)) => Ok(ArgDecl { name: k.to_string(), default: Some(v.to_string()) }),
            None => Ok(ArgDecl { name: w, default: None }),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Instruction::Arg)
}

fn copy_common(args: &str, heredocs: Vec<Heredoc>, flags: &Flags, kw: &str) -> Result<CopyCommon, ErrorKind> {
    let operands = list(args)?;
    let Some((dest, sources)) = operands.split_last().filter(|(_, s)| !s.is_empty()) else {
        return Err(syntax(format!(
            "{kw} requires at least two arguments, but only one was provided. Destination could not be determined"
        )));
    };
    if heredoc_word(dest).is_some() {
        return Err(syntax(format!("{kw} cannot accept a heredoc as a destination")));
    }
    let mut common = CopyCommon {
        dest: dest.clone(),
        chown: flags.string("chown")?,
        chmod: flags.string("chmod")?,
        link: flags.bool("link")?,
        exclude: flags.all("exclude")?,
        ..CopyCommon::default()
    };
    for src in sources {
        match heredoc_word(src) {
            Some((name, ..)) => match heredocs.iter().find(|h| h.name == name) {
                Some(h) => common.inline.push(h.clone()),
                None => return Err(syntax(format!("{kw}: heredoc {name:?} has no body"))),
            },
            None => common.sources.push(src.clone()),
        }
    }
    Ok(common)
}

fn parse_onbuild(args: &str, heredocs: Vec<Heredoc>, escape: char, line: &str) -> Result<Instruction, ErrorKind> {
    let child = split_command(args);
    if child.keyword.is_empty() {
        return Err(syntax("ONBUILD requires at least one argument"));
    }
    match child.keyword.as_str() {
        "onbuild" => return Err(syntax("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")),
        "from" | "maintainer" => {
            return Err(syntax(format!("{} isn't allowed as an ONBUILD trigger", child.keyword.to_uppercase())))
        }
        _ => {}
    }
    let mut expression = {
        let t = line.trim_start();
        t[t.find(char::is_whitespace).unwrap_or(t.len())..].trim_start().to_string()
    };
    for h in &heredocs {
        expression.push('\n');
        expression.push_str(&h.content);
        expression.push_str(&h.name);
    }
    let trigger = build(&child, heredocs, escape, args)?;
    Ok(Instruction::Onbuild(Onbuild { trigger: Box::new(trigger), expression }))
}

fn parse_healthcheck(args: &str, raw_flags: &[String]) -> Result<Instruction, ErrorKind> {
    let (kind, rest) = match args.find(char::is_whitespace) {
        Some(i) => (&args[..i], args[i..].trim_start()),
        None => (args, ""),
    };
    if kind.is_empty() {
        return Err(syntax("HEALTHCHECK requires at least one argument"));
    }
    let none = Healthcheck { test: vec![], interval: 0, timeout: 0, start_period: 0, start_interval: 0, retries: 0 };
    match kind.to_uppercase().as_str() {
        "NONE" => {
            Flags::new(raw_flags, "HEALTHCHECK", &[], &[], &[])?;
            if !rest.is_empty() {
                return Err(syntax("HEALTHCHECK NONE takes no arguments"));
            }
            Ok(Instruction::Healthcheck(Healthcheck { test: vec!["NONE".into()], ..none }))
        }
        "CMD" => {
            const FLAGS: &[&str] = &["interval", "timeout", "start-period", "start-interval", "retries"];
            let flags = Flags::new(raw_flags, "HEALTHCHECK", FLAGS, &[], &[])?;
            let test = match command_line(rest)? {
                CommandLine::Exec(a) if a.is_empty() => return Err(syntax("Missing command after HEALTHCHECK CMD")),
                CommandLine::Shell(s) if s.is_empty() => return Err(syntax("Missing command after HEALTHCHECK CMD")),
                CommandLine::Exec(a) => std::iter::once("CMD".to_string()).chain(a).collect(),
                CommandLine::Shell(s) => vec!["CMD-SHELL".into(), s],
            };
            let interval = |name: &str| -> Result<u64, ErrorKind> {
                let Some(v) = flags.string(name)? else { return Ok(0) };
                let ns = parse_duration(&v).ok_or_else(|| ErrorKind::BadFlag {
                    flag: name.into(),
                    value: v.clone(),
                    why: "expected a duration such as 30s, 1m30s or 500ms".into(),
                })?;
                if ns < 1_000_000 {
                    return Err(syntax(format!("Interval {name:?} cannot be less than 1ms")));
                }
                Ok(ns)
            };
            let retries = match flags.string("retries")? {
                None => 0,
                Some(v) => match v.parse::<i64>() {
                    Ok(n) if n >= 1 => u32::try_from(n).map_err(|_| syntax(format!("--retries {v} is too large")))?,
                    Ok(n) => return Err(syntax(format!("--retries must be at least 1 (not {n})"))),
                    Err(_) => {
                        return Err(ErrorKind::BadFlag { flag: "retries".into(), value: v, why: "not a number".into() })
                    }
                },
            };
            Ok(Instruction::Healthcheck(Healthcheck {
                test,
                interval: interval("interval")?,
                timeout: interval("timeout")?,
                start_period: interval("start-period")?,
                start_interval: interval("start-interval")?,
                retries,
            }))
        }
        other => Err(syntax(format!("Unknown type {other:?} in HEALTHCHECK (try CMD)"))),
    }
}

/// Go's `time.ParseDuration`: `1h30m`, `1.5s`, `300ms`, `10us`; nanoseconds.
pub(crate) fn parse_duration(s: &str) -> Option<u64> {
    if s == "0" {
        return Some(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * unit;
    }
    (total < u64::MAX as f64).then_some(total.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Vec<Located> {
        parse(text, "Dockerfile").unwrap_or_else(|e| panic!("{e}")).instructions
    }

    fn err(text: &str) -> String {
        parse(text, "Dockerfile").unwrap_err().to_string()
    }

    fn run(l: &Located) -> &Run {
        match &l.instruction {
            Instruction::Run(r) => r,
            other => panic!("not RUN: {other:?}"),
        }
    }

    #[test]
    fn lines_continuations_and_comments() {
        let text =
            "# a comment\n\nFROM busybox\nRUN echo a \\\n# comment inside\n  b \\\n\n   \n  c\nRUN  x\\\\\nRUN last\n";
        let is = p(text);
        assert_eq!(is.len(), 4);
        assert_eq!((is[0].line, is[1].line, is[2].line, is[3].line), (3, 4, 10, 11));
        assert_eq!(is[1].end_line, 9);
        // continuation lines keep their leading whitespace; comment and blank ones vanish
        assert_eq!(run(&is[1]).command, CommandLine::Shell("echo a   b   c".into()));
        // an escaped escape at the end is not a continuation
        assert_eq!(run(&is[2]).command, CommandLine::Shell("x\\\\".into()));
    }

    #[test]
    fn a_lone_escape_line_continues_and_crlf_is_accepted() {
        let is = p("FROM a\r\nRUN a \\\r\n\\\r\n b\r\n");
        assert_eq!(run(&is[1]).command, CommandLine::Shell("a  b".into()));
    }

    #[test]
    fn escape_and_syntax_directives() {
        let text = "# syntax=docker/dockerfile:1\n# escape=`\nFROM windows\nCOPY a c:\\\nRUN dir c:\\ `\n  /b\n";
        let df = parse(text, "Dockerfile").unwrap();
        assert_eq!(df.escape, '`');
        assert_eq!(df.syntax.as_deref(), Some("docker/dockerfile:1"));
        match &df.instructions[1].instruction {
            Instruction::Copy(c) => assert_eq!(c.common.dest, "c:\\"),
            other => panic!("{other:?}"),
        }
        assert_eq!(run(&df.instructions[2]).command, CommandLine::Shell("dir c:\\   /b".into()));
        // a directive after a comment or blank line is just a comment
        let df = parse("# hello\n# escape=`\nFROM a\nRUN a \\\n b\n", "Dockerfile").unwrap();
        assert_eq!(df.escape, '\\');
        assert_eq!(run(&df.instructions[1]).command, CommandLine::Shell("a  b".into()));
        assert_eq!(err("# escape=x\nFROM a\n"), "Dockerfile:1: invalid escape token 'x' does not match ` or \\");
        assert_eq!(
            err("# escape=`\n# escape=\\\nFROM a\n"),
            "Dockerfile:2: only one escape parser directive can be used"
        );
        // keys are case-insensitive, spaces allowed
        assert_eq!(parse("#  ESCAPE = `\nFROM a\n", "D").unwrap().escape, '`');
    }

    #[test]
    fn heredocs() {
        let text = "FROM busybox\nRUN <<EOF\necho hi\n  indented\nEOF\nRUN <<-EOT bash\n\techo tabbed\n\tEOT\n\
                    COPY <<one.txt <<\"two.txt\" /dest/\nfirst $X\none.txt\nsecond $X\ntwo.txt\n\
                    RUN <<A cat >/a && 3<<'B' cat >/b\naaa\nA\nbbb\nB\nRUN echo after\n";
        let is = p(text);
        assert_eq!(is.len(), 6);
        let r = run(&is[1]);
        assert_eq!(r.command, CommandLine::Shell("<<EOF".into()));
        assert_eq!(r.heredocs[0].content, "echo hi\n  indented\n");
        assert!(r.heredocs[0].expand && !r.heredocs[0].chomp);
        assert_eq!((is[1].line, is[1].end_line), (2, 5));
        let r = run(&is[2]);
        assert!(r.heredocs[0].chomp);
        assert_eq!(r.heredocs[0].body(), "echo tabbed\n");
        match &is[3].instruction {
            Instruction::Copy(c) => {
                assert!(c.common.sources.is_empty());
                assert_eq!(c.common.dest, "/dest/");
                assert_eq!(c.common.inline.len(), 2);
                assert_eq!((c.common.inline[0].name.as_str(), c.common.inline[0].expand), ("one.txt", true));
                assert_eq!((c.common.inline[1].name.as_str(), c.common.inline[1].expand), ("two.txt", false));
                assert_eq!(c.common.inline[1].content, "second $X\n");
            }
            other => panic!("{other:?}"),
        }
        let r = run(&is[4]);
        assert_eq!(r.heredocs.len(), 2);
        assert_eq!((r.heredocs[0].content.as_str(), r.heredocs[1].content.as_str()), ("aaa\n", "bbb\n"));
        assert_eq!((r.heredocs[1].fd, r.heredocs[1].expand), (3, false));
        assert_eq!(is[5].line, 19);
        // exec form has no heredocs; a heredoc as a COPY destination is refused
        let is = p("FROM a\nRUN [\"cat\", \"<<EOF\"]\nRUN true\n");
        assert!(run(&is[1]).heredocs.is_empty());
        assert_eq!(
            err("FROM a\nCOPY x <<EOF\nEOF\n"),
            "Dockerfile:2: COPY: COPY cannot accept a heredoc as a destination"
        );
        assert_eq!(
            err("FROM a\nRUN <<EOF\nno end\n"),
            "Dockerfile:2: RUN: unterminated heredoc \"EOF\": no line EOF ends it"
        );
        // `<<` inside a word is not a heredoc
        assert!(run(&p("FROM a\nRUN echo a<<b\n")[1]).heredocs.is_empty());
    }

    #[test]
    fn heredoc_in_onbuild_keeps_the_body_in_the_expression() {
        let is = p("FROM a\nONBUILD RUN <<EOF\necho x\nEOF\n");
        match &is[1].instruction {
            Instruction::Onbuild(o) => {
                assert_eq!(o.expression, "RUN <<EOF\necho x\nEOF");
                assert_eq!(run(&Located { instruction: (*o.trigger).clone(), ..is[1].clone() }).heredocs.len(), 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shell_and_exec_forms() {
        let is = p("FROM a\nCMD [\"a\", \"b c\"]\nCMD echo [\"x\"]\nENTRYPOINT [\"x\"] trailing\nCMD [\"unterminated\"\nSHELL [\"/bin/bash\", \"-c\"]\nCMD [ ]\n");
        let cmds: Vec<&Instruction> = is.iter().map(|l| &l.instruction).collect();
        assert_eq!(cmds[1], &Instruction::Cmd(CommandLine::Exec(vec!["a".into(), "b c".into()])));
        assert_eq!(cmds[2], &Instruction::Cmd(CommandLine::Shell("echo [\"x\"]".into())));
        assert_eq!(cmds[3], &Instruction::Entrypoint(CommandLine::Exec(vec!["x".into()])));
        assert_eq!(cmds[4], &Instruction::Cmd(CommandLine::Shell("[\"unterminated\"".into())));
        assert_eq!(cmds[5], &Instruction::Shell(vec!["/bin/bash".into(), "-c".into()]));
        assert_eq!(cmds[6], &Instruction::Cmd(CommandLine::Exec(vec![])));
        assert_eq!(
            err("FROM a\nCMD [\"a\", 1]\n"),
            "Dockerfile:2: CMD: when using JSON array syntax, arrays must be comprised of strings only"
        );
        assert_eq!(
            err("FROM a\nSHELL /bin/sh -c\n"),
            "Dockerfile:2: SHELL: SHELL requires the arguments to be in JSON form: SHELL /bin/sh -c"
        );
    }

    #[test]
    fn env_label_and_arg_forms() {
        let is = p(
            "FROM a\nENV A=1 B=\"x y\" C='z'\nENV LEGACY hello  world\nLABEL \"k k\"=v a.b=\"c\\\"d\"\nARG X Y=2 Z=\n",
        );
        let kv = |k: &str, v: &str| KeyValue { key: k.into(), value: v.into() };
        assert_eq!(is[1].instruction, Instruction::Env(vec![kv("A", "1"), kv("B", "\"x y\""), kv("C", "'z'")]));
        assert_eq!(is[2].instruction, Instruction::Env(vec![kv("LEGACY", "hello  world")]));
        assert_eq!(is[3].instruction, Instruction::Label(vec![kv("\"k k\"", "v"), kv("a.b", "\"c\\\"d\"")]));
        assert_eq!(
            is[4].instruction,
            Instruction::Arg(vec![
                ArgDecl { name: "X".into(), default: None },
                ArgDecl { name: "Y".into(), default: Some("2".into()) },
                ArgDecl { name: "Z".into(), default: Some(String::new()) },
            ])
        );
        assert_eq!(
            err("FROM a\nENV A=1 B\n"),
            "Dockerfile:2: ENV: Syntax error - can't find = in \"B\". Must be of the form: name=value"
        );
        assert_eq!(err("FROM a\nENV A\n"), "Dockerfile:2: ENV: ENV must have two arguments");
        assert_eq!(err("FROM a\nLABEL =x\n"), "Dockerfile:2: LABEL: LABEL names can not be blank");
        assert_eq!(err("FROM a\nENV\n"), "Dockerfile:2: ENV: ENV requires at least one argument");
    }

    #[test]
    fn from_forms() {
        let is = p("ARG V=1\nFROM --platform=$BUILDPLATFORM golang:$V AS Build\nFROM scratch\n");
        assert_eq!(
            is[1].instruction,
            Instruction::From(FromImage {
                image: "golang:$V".into(),
                name: Some("build".into()),
                platform: Some("$BUILDPLATFORM".into())
            })
        );
        assert_eq!(err("FROM a b\n"), "Dockerfile:1: FROM: FROM requires either one or three arguments");
        assert_eq!(
            err("FROM a AS 1x\n"),
            "Dockerfile:1: FROM: invalid name for build stage: \"1x\", name can't start with a number or contain symbols"
        );
        assert_eq!(
            err("RUN x\nFROM a\n"),
            "Dockerfile:1: RUN: RUN before the first FROM: only ARG may come before FROM"
        );
        assert_eq!(err("# only a comment\n\n"), "Dockerfile: the file has no instructions");
    }

    #[test]
    fn run_flags_and_mounts() {
        let is = p("FROM a\nRUN --mount=type=cache,target=/root/.cache,id=go,sharing=locked --network=none go build\n\
                    RUN --mount=type=secret,id=tok,required --mount=type=bind,from=build,source=/x,target=/y,rw echo\n\
                    RUN --mount=type=tmpfs,target=/t,size=64m --mount=target=/ctx \"--not-a-flag\"\n\
                    RUN --mount=type=secret,target=/run/k,env=K,mode=0440,uid=1 -- --x\n");
        let r = run(&is[1]);
        assert_eq!(r.network, Some(Network::None));
        assert_eq!(r.command, CommandLine::Shell("go build".into()));
        let m = &r.mounts[0];
        assert_eq!(
            (m.kind, m.target.as_deref(), m.id.as_deref(), m.sharing),
            (MountKind::Cache, Some("/root/.cache"), Some("go"), Sharing::Locked)
        );
        let r = run(&is[2]);
        assert_eq!((r.mounts[0].kind, r.mounts[0].required), (MountKind::Secret, true));
        let b = &r.mounts[1];
        assert_eq!(
            (b.kind, b.from.as_deref(), b.source.as_deref(), b.readonly),
            (MountKind::Bind, Some("build"), Some("/x"), Some(false))
        );
        let r = run(&is[3]);
        assert_eq!((r.mounts[0].kind, r.mounts[0].size), (MountKind::Tmpfs, Some(64 << 20)));
        assert_eq!((r.mounts[1].kind, r.mounts[1].target.as_deref()), (MountKind::Bind, Some("/ctx")));
        assert_eq!(r.command, CommandLine::Shell("\"--not-a-flag\"".into()));
        let r = run(&is[4]);
        assert_eq!((r.mounts[0].env.as_deref(), r.mounts[0].mode, r.mounts[0].uid), (Some("K"), Some(0o440), Some(1)));
        assert_eq!(r.command, CommandLine::Shell("--x".into()));

        assert_eq!(
            err("FROM a\nRUN --bogus=1 echo\n"),
            "Dockerfile:2: RUN: unknown flag --bogus (RUN takes --mount, --network, --security)"
        );
        assert_eq!(
            err("FROM a\nRUN --network=bridge x\n"),
            "Dockerfile:2: RUN: invalid --network=\"bridge\": use default, none or host"
        );
        assert_eq!(
            err("FROM a\nRUN --network=none --network=host x\n"),
            "Dockerfile:2: RUN: flag --network given twice"
        );
        assert_eq!(
            err("FROM a\nRUN --mount=type=cache x\n"),
            "Dockerfile:2: RUN: invalid --mount=\"type=cache\": the mount needs target="
        );
        assert_eq!(
            err("FROM a\nRUN --mount=type=tmpfs,target=/x,id=1 x\n"),
            "Dockerfile:2: RUN: invalid --mount=\"type=tmpfs,target=/x,id=1\": id is not an option of a tmpfs mount"
        );
        assert_eq!(
            err("FROM a\nRUN --mount=type=ssh x\n"),
            "Dockerfile:2: RUN: RUN --mount=type=ssh is not supported by imgforge: use a secret mount"
        );
        assert_eq!(
            err("FROM a\nRUN --mount=type=bind,target=/x,colour=red x\n"),
            "Dockerfile:2: RUN: invalid --mount=\"type=bind,target=/x,colour=red\": unexpected key \"colour\" in \"colour=red\""
        );
        assert!(err("FROM a\nRUN --security=insecure x\n").contains("not supported"));
    }

    #[test]
    fn copy_and_add_flags() {
        let is = p("FROM a\nCOPY --from=build --chown=1:2 --chmod=755 --link --exclude=*.tmp --exclude=x a b /c/\n\
                    ADD --checksum=sha256:abc https://x/y.tar /z\nCOPY [\"a b\", \"/d\"]\nCOPY --link=false a b\n");
        match &is[1].instruction {
            Instruction::Copy(c) => {
                assert_eq!(c.from.as_deref(), Some("build"));
                assert_eq!(
                    (c.common.chown.as_deref(), c.common.chmod.as_deref(), c.common.link),
                    (Some("1:2"), Some("755"), true)
                );
                assert_eq!(c.common.exclude, ["*.tmp", "x"]);
                assert_eq!(
                    (c.common.sources.clone(), c.common.dest.as_str()),
                    (vec!["a".to_string(), "b".into()], "/c/")
                );
            }
            other => panic!("{other:?}"),
        }
        match &is[2].instruction {
            Instruction::Add(a) => assert_eq!(a.checksum.as_deref(), Some("sha256:abc")),
            other => panic!("{other:?}"),
        }
        match &is[3].instruction {
            Instruction::Copy(c) => assert_eq!((c.common.sources[0].as_str(), c.common.dest.as_str()), ("a b", "/d")),
            other => panic!("{other:?}"),
        }
        match &is[4].instruction {
            Instruction::Copy(c) => assert!(!c.common.link),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err("FROM a\nCOPY onlyone\n"),
            "Dockerfile:2: COPY: COPY requires at least two arguments, but only one was provided. Destination could not be determined"
        );
        assert_eq!(err("FROM a\nCOPY --from a b\n"), "Dockerfile:2: COPY: missing a value on flag: --from");
        assert_eq!(
            err("FROM a\nCOPY --link=maybe a b\n"),
            "Dockerfile:2: COPY: expecting boolean value for flag link, not: maybe"
        );
        assert_eq!(
            err("FROM a\nADD --from=x a b\n"),
            "Dockerfile:2: ADD: unknown flag --from (ADD takes --chown, --chmod, --link, --exclude, --checksum)"
        );
        assert!(err("FROM a\nADD --keep-git-dir https://x/y.git /z\n").contains("not supported by imgforge"));
        assert_eq!(
            err("FROM a\nWORKDIR --x=1 /a\n"),
            "Dockerfile:2: WORKDIR: unknown flag --x (WORKDIR takes no flags)"
        );
    }

    #[test]
    fn unknown_instructions_name_the_line_and_suggest() {
        assert_eq!(err("FROM a\nRUN ok\nXYZZY x\n"), "Dockerfile:3: unknown instruction XYZZY");
        assert_eq!(err("FROM a\nCOPPY a b\n"), "Dockerfile:2: unknown instruction COPPY (did you mean COPY?)");
        assert_eq!(err("FROM a\nworkdri /x\n"), "Dockerfile:2: unknown instruction WORKDRI (did you mean WORKDIR?)");
    }

    #[test]
    fn onbuild_rules() {
        let is = p("FROM a\nONBUILD  RUN echo hi\nonbuild copy --chown=1 a b\n");
        match &is[1].instruction {
            Instruction::Onbuild(o) => {
                assert_eq!(o.expression, "RUN echo hi");
                assert!(matches!(*o.trigger, Instruction::Run(_)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err("FROM a\nONBUILD ONBUILD RUN x\n"),
            "Dockerfile:2: ONBUILD: Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"
        );
        assert_eq!(err("FROM a\nONBUILD FROM x\n"), "Dockerfile:2: ONBUILD: FROM isn't allowed as an ONBUILD trigger");
        assert_eq!(
            err("FROM a\nONBUILD RUN --nope x\n"),
            "Dockerfile:2: ONBUILD: unknown flag --nope (RUN takes --mount, --network, --security)"
        );
        let t = parse_trigger("RUN echo from base", "Dockerfile", 7).unwrap();
        assert_eq!((t.line, t.instruction.keyword()), (7, "RUN"));
    }

    #[test]
    fn healthcheck_forms() {
        let is = p("FROM a\nHEALTHCHECK --interval=5s --timeout=1m30s --retries=3 CMD curl -f http://x/\nHEALTHCHECK NONE\nHEALTHCHECK CMD [\"true\"]\n");
        match &is[1].instruction {
            Instruction::Healthcheck(h) => {
                assert_eq!(h.test, ["CMD-SHELL", "curl -f http://x/"]);
                assert_eq!((h.interval, h.timeout, h.retries), (5_000_000_000, 90_000_000_000, 3));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&is[2].instruction, Instruction::Healthcheck(h) if h.test == ["NONE"]));
        assert!(matches!(&is[3].instruction, Instruction::Healthcheck(h) if h.test == ["CMD", "true"]));
        assert_eq!(
            err("FROM a\nHEALTHCHECK --retries=0 CMD x\n"),
            "Dockerfile:2: HEALTHCHECK: --retries must be at least 1 (not 0)"
        );
        assert_eq!(
            err("FROM a\nHEALTHCHECK --interval=0s CMD x\n"),
            "Dockerfile:2: HEALTHCHECK: Interval \"interval\" cannot be less than 1ms"
        );
        assert_eq!(
            err("FROM a\nHEALTHCHECK NONE x\n"),
            "Dockerfile:2: HEALTHCHECK: HEALTHCHECK NONE takes no arguments"
        );
        assert_eq!(
            err("FROM a\nHEALTHCHECK WGET x\n"),
            "Dockerfile:2: HEALTHCHECK: Unknown type \"WGET\" in HEALTHCHECK (try CMD)"
        );
        assert_eq!(
            err("FROM a\nHEALTHCHECK CMD\n"),
            "Dockerfile:2: HEALTHCHECK: Missing command after HEALTHCHECK CMD"
        );
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_duration("300ms"), Some(300_000_000));
        assert_eq!(parse_duration("10us"), Some(10_000));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn other_single_argument_instructions() {
        let is = p("FROM a\nUSER app:app\nWORKDIR /a b\nSTOPSIGNAL SIGKILL\nMAINTAINER Jane <j@x>\nEXPOSE 80 443/udp\nVOLUME [\"/a\", \"/b\"]\nVOLUME /c /d\n");
        assert_eq!(is[1].instruction, Instruction::User("app:app".into()));
        assert_eq!(is[2].instruction, Instruction::Workdir("/a b".into()));
        assert_eq!(is[3].instruction, Instruction::Stopsignal("SIGKILL".into()));
        assert_eq!(is[4].instruction, Instruction::Maintainer("Jane <j@x>".into()));
        assert_eq!(is[5].instruction, Instruction::Expose(vec!["80".into(), "443/udp".into()]));
        assert_eq!(is[6].instruction, Instruction::Volume(vec!["/a".into(), "/b".into()]));
        assert_eq!(is[7].instruction, Instruction::Volume(vec!["/c".into(), "/d".into()]));
        assert_eq!(err("FROM a\nUSER\n"), "Dockerfile:2: USER: USER requires exactly one argument");
        assert_eq!(err("FROM a\nVOLUME [\"\"]\n"), "Dockerfile:2: VOLUME: VOLUME specified can not be an empty string");
    }

    #[test]
    fn keywords_are_case_insensitive_and_a_bom_is_ignored() {
        let is = p("\u{feff}from a\nrun echo\nCoPy a b\n");
        assert_eq!(is.iter().map(|l| l.instruction.keyword()).collect::<Vec<_>>(), ["FROM", "RUN", "COPY"]);
    }
}

//! Authoring lints on the rhai AST of every expression and script function: the mistakes a
//! rev-ops user makes that rhai accepts and then gets wrong at run time, or silently.
//!
//! - `account.<name>` in a script where `<name>` is not a declared input: rhai compiles it
//!   and fails every account at run time, so it is a **load error** here, with the place in
//!   the script and a "did you mean";
//! - `a / b` with both sides integer-typed (an `integer` input, or an integer literal, at
//!   least one an input): rhai divides integers to an integer (`3 / 4 == 0`);
//! - an input with `one_of` compared (`==`, `!=`) with a text it can never take;
//! - a `bool` input compared with text (`partner == "true"`): always false in rhai.
//!
//! Only what the AST shows for sure is reported: a local variable that shadows an input is
//! not mistaken for it, and functions are judged by their own parameters.
//!
//! [`foreign_syntax`] is the other half: when rhai cannot parse a source, words of other
//! languages (`elif`, `&&=`, `null`, ...) are found in it and explained first.

use super::Input;
use super::raw::{InputType, Scalar};
use rhai::{AST, ASTNode, Expr, Position, Stmt};
use std::collections::HashSet;

/// One finding at a position of the source that was compiled (1-based line and column).
pub(crate) struct AstFinding {
    pub error: bool,
    pub code: &'static str,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub help: Option<String>,
}

/// How a source reads the inputs.
pub(crate) enum Reads<'a> {
    /// `policy.toml` expressions: inputs are variables of their own name.
    Variables,
    /// A script function whose parameter `param` is the account (`account.revenue_12m`).
    Account { param: &'a str },
    /// A script function that does not take the account: only integer literals matter.
    Nothing,
}

/// The type side of an operand, as far as the AST shows it.
#[derive(Clone, Copy)]
enum Operand<'i> {
    Input(&'i Input),
    IntLiteral,
    Other,
}

struct Walker<'a> {
    inputs: &'a [Input],
    reads: Reads<'a>,
    /// Names declared by `let`/`const` or loops in the source: never an input.
    locals: HashSet<String>,
    out: Vec<AstFinding>,
}

fn at(pos: Position) -> (usize, usize) {
    (pos.line().unwrap_or(1), pos.position().unwrap_or(1))
}

impl<'a> Walker<'a> {
    fn input(&self, name: &str) -> Option<&'a Input> {
        self.inputs.iter().find(|i| i.name == name)
    }

    fn operand(&self, e: &Expr) -> Operand<'a> {
        match (e, &self.reads) {
            (Expr::IntegerConstant(..), _) => Operand::IntLiteral,
            (Expr::Variable(x, ..), Reads::Variables) => {
                let name = x.1.as_str();
                match self.input(name) {
                    Some(i) if !self.locals.contains(name) => Operand::Input(i),
                    _ => Operand::Other,
                }
            }
            (Expr::Dot(x, ..), Reads::Account { param }) => match (&x.lhs, &x.rhs) {
                (Expr::Variable(v, ..), Expr::Property(p, _)) if v.1.as_str() == *param => {
                    self.input(p.2.as_str()).map_or(Operand::Other, Operand::Input)
                }
                _ => Operand::Other,
            },
            _ => Operand::Other,
        }
    }

    fn push(
        &mut self,
        error: bool,
        code: &'static str,
        pos: Position,
        msg: String,
        help: Option<String>,
    ) {
        let (line, column) = at(pos);
        self.out.push(AstFinding { error, code, line, column, message: msg, help });
    }

    fn expr(&mut self, e: &Expr) {
        match e {
            Expr::Dot(x, _, _) => {
                if let (Reads::Account { param }, Expr::Variable(v, ..), Expr::Property(p, pos)) =
                    (&self.reads, &x.lhs, &x.rhs)
                    && v.1.as_str() == *param
                {
                    let name = p.2.as_str();
                    if self.input(name).is_none() {
                        let help = super::diag::did_you_mean(
                            name,
                            self.inputs.iter().map(|i| i.name.as_str()),
                        )
                        .or_else(|| Some("scripts read declared `[inputs]` only".into()));
                        let param = param.to_string();
                        self.push(
                            true,
                            "unknown_variable",
                            *pos,
                            format!("`{param}.{name}` is not a declared input"),
                            help,
                        );
                    }
                }
            }
            Expr::FnCall(f, pos) if f.op_token.is_some() && f.args.len() == 2 => {
                let (a, b) = (self.operand(&f.args[0]), self.operand(&f.args[1]));
                match f.name.as_str() {
                    "/" => self.division(&f.args, *pos),
                    "==" | "!=" => {
                        self.comparison(a, &f.args[1], *pos);
                        self.comparison(b, &f.args[0], *pos);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// `Some(reads_an_input)` when `e` is integer-typed as far as the AST shows: an
    /// `integer` input, an integer literal, or `+ - * / %` of two such.
    fn integer(&self, e: &Expr) -> Option<bool> {
        match self.operand(e) {
            Operand::Input(i) => return (i.ty == InputType::Integer).then_some(true),
            Operand::IntLiteral => return Some(false),
            Operand::Other => {}
        }
        match e {
            Expr::FnCall(f, _)
                if f.op_token.is_some()
                    && f.args.len() == 2
                    && matches!(f.name.as_str(), "+" | "-" | "*" | "/" | "%") =>
            {
                Some(self.integer(&f.args[0])? | self.integer(&f.args[1])?)
            }
            Expr::Stmt(b) if b.statements().len() == 1 => match &b.statements()[0] {
                Stmt::Expr(inner) => self.integer(inner),
                _ => None,
            },
            _ => None,
        }
    }

    /// The first input an integer expression reads, as the source writes it.
    fn first_input(&self, e: &Expr) -> Option<String> {
        if let Operand::Input(_) = self.operand(e) {
            return Some(self.shown(e));
        }
        match e {
            Expr::FnCall(f, _) => f.args.iter().find_map(|a| self.first_input(a)),
            Expr::Stmt(b) => b.statements().iter().find_map(|st| match st {
                Stmt::Expr(inner) => self.first_input(inner),
                _ => None,
            }),
            _ => None,
        }
    }

    /// The source of an operand, for the message (inputs and literals; `…` otherwise).
    fn shown(&self, e: &Expr) -> String {
        match (self.operand(e), e) {
            (Operand::Input(i), Expr::Dot(..)) => format!("{}.{}", self.param(), i.name),
            (Operand::Input(i), _) => i.name.clone(),
            (_, Expr::IntegerConstant(n, _)) => n.to_string(),
            _ => "(…)".into(),
        }
    }

    fn division(&mut self, args: &[Expr], pos: Position) {
        let (Some(a), Some(b)) = (self.integer(&args[0]), self.integer(&args[1])) else {
            return;
        };
        if !(a || b) {
            return;
        }
        let (l, r) = (self.shown(&args[0]), self.shown(&args[1]));
        let help = match (self.operand(&args[0]), self.first_input(&args[0])) {
            (Operand::Input(_) | Operand::IntLiteral, _) | (_, None) => {
                format!("for a fraction write `{l}.to_float() / {r}`")
            }
            (_, Some(name)) => {
                format!("for a fraction convert a side to a float first, e.g. `{name}.to_float()`")
            }
        };
        self.push(
            false,
            "integer_division",
            pos,
            format!("`{l} / {r}` divides two integers: the result is rounded down to an integer (`3 / 4` is 0)"),
            Some(help),
        );
    }

    fn param(&self) -> &str {
        match self.reads {
            Reads::Account { param } => param,
            _ => "account",
        }
    }

    /// `input == "literal"`: the literal must be a value the input can take.
    fn comparison(&mut self, side: Operand, other: &Expr, pos: Position) {
        let Operand::Input(inp) = side else { return };
        let Expr::StringConstant(lit, _) = other else { return };
        let name = match self.reads {
            Reads::Account { param } => format!("{param}.{}", inp.name),
            _ => inp.name.clone(),
        };
        if inp.ty == InputType::Bool {
            let b = lit.trim().to_ascii_lowercase();
            let hint = if b == "true" || b == "false" {
                format!("`{name}` is a bool: write `{name}` for true and `!{name}` for false")
            } else {
                format!("`{name}` is a bool: compare it with `true` or `false`, without quotes")
            };
            self.push(
                false,
                "bool_compared_with_text",
                pos,
                format!(
                    "`{name}` is a `bool` and is compared with the text \"{lit}\": never equal"
                ),
                Some(hint),
            );
            return;
        }
        let Some(list) = &inp.one_of else { return };
        let allowed: Vec<&str> = list
            .iter()
            .filter_map(|v| match v {
                Scalar::String(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        if allowed.is_empty() || allowed.contains(&lit.as_str()) {
            return;
        }
        let help = super::diag::did_you_mean(lit, allowed.iter().copied()).or_else(|| {
            Some(format!(
                "`{}` is one of {}",
                inp.name,
                allowed.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ")
            ))
        });
        self.push(
            false,
            "not_one_of_value",
            pos,
            format!("`{name}` is compared with \"{lit}\", a value its `one_of` does not allow: never equal"),
            help,
        );
    }

    fn walk(&mut self, ast: &AST) {
        // Locals first, so a `let` after its first use still shadows.
        ast.walk(&mut |path: &[ASTNode]| {
            if let Some(ASTNode::Stmt(Stmt::Var(x, ..))) = path.last() {
                self.locals.insert(x.0.name.to_string());
            }
            if let Some(ASTNode::Stmt(Stmt::For(x, ..))) = path.last() {
                self.locals.insert(x.0.name.to_string());
            }
            true
        });
        ast.walk(&mut |path: &[ASTNode]| {
            if let Some(ASTNode::Expr(e)) = path.last() {
                self.expr(e);
            }
            true
        });
    }
}

/// Lints an expression of `policy.toml` (its own AST, before scripts are merged in).
pub(crate) fn expression(ast: &AST, inputs: &[Input]) -> Vec<AstFinding> {
    let mut w = Walker { inputs, reads: Reads::Variables, locals: HashSet::new(), out: Vec::new() };
    w.walk(ast);
    w.out
}

/// Lints every function of one script file. `takes_account(name, first_param)` says which
/// functions get the account (a `script` criterion's function, or a parameter named
/// `account`).
pub(crate) fn script(
    file_ast: &AST,
    inputs: &[Input],
    takes_account: &dyn Fn(&str, &str) -> bool,
) -> Vec<AstFinding> {
    let mut out = Vec::new();
    for f in file_ast.shared_lib().iter_script_fn_info() {
        let def = f.4.clone();
        let first = def.params.first().map(|p| p.to_string());
        let mut params: HashSet<String> = def.params.iter().map(|p| p.to_string()).collect();
        let mut m = rhai::Module::new();
        m.set_script_fn(def);
        let one = AST::new_from_module(m);
        let reads = match &first {
            Some(p) if takes_account(f.2, p) => Reads::Account { param: p.as_str() },
            _ => Reads::Nothing,
        };
        // Parameters are locals too: `fn f(x)` reads no input named `x`.
        let mut w = Walker { inputs, reads, locals: std::mem::take(&mut params), out: Vec::new() };
        w.walk(&one);
        out.append(&mut w.out);
    }
    out
}

/// Words of other languages that make rhai's own error misleading, each with what rhai
/// writes instead.
const FOREIGN: &[(&str, &str)] = &[
    ("elif", "rhai writes `else if`"),
    ("elsif", "rhai writes `else if`"),
    ("elseif", "rhai writes `else if`"),
    ("&&=", "rhai has no `&&=`: write `x = x && y`"),
    ("||=", "rhai has no `||=`: write `x = x || y`"),
    ("===", "rhai compares with `==`"),
    ("!==", "rhai compares with `!=`"),
    ("++", "rhai has no `++`: write `x += 1`"),
    ("null", "an absent value is `()` in rhai (`nps == ()`)"),
    ("nil", "an absent value is `()` in rhai (`nps == ()`)"),
    ("None", "an absent value is `()` in rhai (`nps == ()`)"),
    ("True", "rhai writes `true`"),
    ("False", "rhai writes `false`"),
    ("and", "rhai writes `&&` for `and`"),
    ("or", "rhai writes `||` for `or`"),
    ("not", "rhai writes `!` for `not`"),
    ("then", "rhai has no `then`: write `if cond { ... } else { ... }`"),
    ("def", "rhai defines functions with `fn`"),
    ("function", "rhai defines functions with `fn`"),
    ("var", "rhai declares variables with `let`"),
];

/// Byte offset and hint of the first word of another language in `src`, outside strings and
/// comments; `known` names (declared inputs) are never foreign.
pub(crate) fn foreign_syntax(
    src: &str,
    known: &dyn Fn(&str) -> bool,
) -> Option<(usize, &'static str, &'static str)> {
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'`' | b'\'' => {
                let q = b[i];
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let word = &src[start..i];
                if !known(word)
                    && let Some((w, hint)) = FOREIGN.iter().find(|(w, _)| *w == word)
                {
                    return Some((start, w, hint));
                }
            }
            _ => {
                for (w, hint) in
                    FOREIGN.iter().filter(|(w, _)| !w.as_bytes()[0].is_ascii_alphabetic())
                {
                    if b[i..].starts_with(w.as_bytes()) {
                        return Some((i, w, hint));
                    }
                }
                i += 1;
            }
        }
    }
    None
}

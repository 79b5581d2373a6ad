//! A native fast path for the part of rhai that policies use most.
//!
//! PERF-NOTES: every rhai evaluation pays for function resolution, argument handling and
//! `Dynamic` juggling; the decision itself needs a few dozen operations. So when a policy
//! loads, each compiled expression (and each script function a criterion or template calls) is
//! translated, if it stays inside a small subset — literals, inputs, `score`/`tier`, locals,
//! arithmetic and comparisons on the built-in types, `&&`/`||`, `if`, `let`, `switch` over a
//! `one_of` input, interpolated strings, a few pure built-ins and non-recursive script
//! functions — into a tree that is walked here without rhai.
//!
//! The contract is exactness, not a second dialect: the subset follows rhai 1.27's own rules
//! (checked integer arithmetic, its relative-epsilon float comparisons, `()` and mixed-type
//! comparisons, string ordering). Whenever a value leaves the cases copied here — an overflow,
//! a division by zero, a type rhai would reject or resolve through a registered function, a
//! string over the size limit — evaluation answers [`Fallback`] and the caller runs the same
//! expression through rhai, which then gives the result or the error it always gave. Nothing
//! here has side effects, so running rhai after a partial native run is safe. A differential
//! test (tests/native.rs) compares both paths over the shipped policies and random inputs.

use super::Var;
use rhai::{AST, ASTNode, Dynamic, Engine, Expr as RExpr, ImmutableString, Stmt as RStmt};
use std::collections::HashMap;
use std::sync::Arc;

/// A value in the subset.
#[derive(Debug, Clone, PartialEq)]
pub enum V {
    Unit,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(ImmutableString),
    /// The account argument of a script function (`account.x` reads input x).
    Account,
}

impl V {
    pub fn from_dynamic(d: &Dynamic) -> Option<V> {
        if d.is_unit() {
            return Some(V::Unit);
        }
        if let Ok(x) = d.as_float() {
            return Some(V::Float(x));
        }
        if let Ok(i) = d.as_int() {
            return Some(V::Int(i));
        }
        if let Ok(b) = d.as_bool() {
            return Some(V::Bool(b));
        }
        if d.is_string() {
            return d.clone().into_immutable_string().ok().map(V::Str);
        }
        None
    }

    pub fn into_dynamic(self) -> Dynamic {
        match self {
            V::Unit | V::Account => Dynamic::UNIT,
            V::Bool(b) => Dynamic::from_bool(b),
            V::Int(i) => Dynamic::from_int(i),
            V::Float(x) => Dynamic::from_float(x),
            V::Str(s) => Dynamic::from(s),
        }
    }
}

/// What an input slot holds (or `()`), known from the policy's `[inputs]`: reading it then
/// needs one type test, not four.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Float,
    Int,
    Bool,
    Str,
}

#[inline]
fn read(d: &Dynamic, kind: Kind) -> Result<V, Fallback> {
    let v = match kind {
        Kind::Float => d.as_float().ok().map(V::Float),
        Kind::Int => d.as_int().ok().map(V::Int),
        Kind::Bool => d.as_bool().ok().map(V::Bool),
        Kind::Str => None,
    };
    match v {
        Some(v) => Ok(v),
        None => V::from_dynamic(d).ok_or(Fallback),
    }
}

/// The evaluation left the subset: run rhai instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallback;

/// What expressions read besides their own locals.
pub struct Env<'a> {
    pub values: &'a [Dynamic],
    pub as_of: i64,
    pub score: f64,
    pub tier: &'a ImmutableString,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bin {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Builtin {
    DaysSince,
    DaysUntil,
    ToFloat,
    Round,
    Floor,
    Ceiling,
    Abs,
    Min,
    Max,
}

#[derive(Debug)]
enum Node {
    Const(V),
    Var(Var),
    Input(usize, Kind),
    Local(usize),
    /// `account.x` where the left side evaluates to the account.
    Prop(Box<Node>, usize, Kind),
    Bin(Bin, Box<Node>, Box<Node>),
    Neg(Box<Node>),
    Not(Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
    Call(Builtin, Vec<Node>),
    /// A script function of the policy, by index into [`Lib::funcs`].
    User(usize, Vec<Node>),
    If(Box<Node>, Box<Node>, Box<Node>),
    Block(Block),
    Interp(Vec<Node>),
    /// `a ?? b`: the first operand that is not `()`.
    Coalesce(Vec<Node>),
    /// `switch` over a `one_of` input: the arm each allowed value takes, found by asking rhai
    /// at load time (its case table is keyed by a private hash).
    Switch(Box<Node>, Vec<(V, Option<usize>)>, Vec<Node>),
}

#[derive(Debug)]
enum Stmt {
    Let(usize, Node),
    Expr(Node),
    Return(Node),
}

#[derive(Debug, Default)]
struct Block(Vec<Stmt>);

#[derive(Debug)]
struct Func {
    params: usize,
    slots: usize,
    body: Block,
}

/// Script functions translated once per policy, shared by its expressions.
#[derive(Debug, Default)]
pub struct Lib {
    funcs: Vec<Option<Func>>,
    index: HashMap<(String, usize), usize>,
}

/// A translated expression.
#[derive(Debug)]
pub struct Code {
    root: Node,
    slots: usize,
    lib: Arc<Lib>,
    max_string_size: usize,
}

/// What a translation may use.
pub struct Builder<'a> {
    pub engine: &'a Engine,
    pub lib_ast: &'a AST,
    pub vars: &'a HashMap<String, Var>,
    /// Input name → slot, for `account.x`.
    pub inputs: &'a HashMap<String, usize>,
    /// Slot → what it holds.
    pub kinds: &'a [Kind],
    /// Slot → allowed values of a `one_of` input (with `()` when it may be absent).
    pub domains: &'a HashMap<usize, Vec<V>>,
    pub max_operations: u64,
    pub max_call_levels: usize,
    pub max_string_size: usize,
}

/// Upper bound on rhai's operation count per node (a node, its call, its conversion).
const OPS_PER_NODE: u64 = 4;

struct Scope {
    names: Vec<(ImmutableString, usize)>,
    slots: usize,
    /// Inside a function: no global variables, no nested user calls.
    in_fn: bool,
    nodes: u64,
}

impl Scope {
    fn new(in_fn: bool) -> Self {
        Scope { names: Vec::new(), slots: 0, in_fn, nodes: 0 }
    }
    fn lookup(&self, name: &str) -> Option<usize> {
        self.names.iter().rev().find(|(n, _)| n.as_str() == name).map(|&(_, s)| s)
    }
    fn declare(&mut self, name: ImmutableString) -> usize {
        let s = self.slots;
        self.slots += 1;
        self.names.push((name, s));
        s
    }
}

/// A translation, or why the subset does not cover it.
type Tr<T> = Result<T, &'static str>;

impl<'a> Builder<'a> {
    /// Translates all script functions (those that fit the subset).
    pub fn lib(&self) -> Lib {
        let mut lib = Lib::default();
        let metas: Vec<(String, usize, bool)> = self
            .lib_ast
            .iter_functions()
            .map(|m| (m.name.to_string(), m.params.len(), m.this_type.is_some()))
            .collect();
        for (name, arity, is_method) in metas {
            let idx = lib.funcs.len();
            lib.index.insert((name.clone(), arity), idx);
            lib.funcs.push(if is_method { None } else { self.func(&name, arity, &lib) });
        }
        lib
    }

    fn func(&self, name: &str, arity: usize, lib: &Lib) -> Option<Func> {
        let def = self
            .lib_ast
            .shared_lib()
            .iter_script_fn_info()
            .find(|f| f.2 == name && f.3 == arity)
            .map(|f| f.4.clone())?;
        let params: Vec<ImmutableString> = def.params.iter().cloned().collect();
        // An AST holding only this function: its walk visits the body's top-level statements
        // with a path of length 1.
        let mut m = rhai::Module::new();
        m.set_script_fn(def);
        let one = AST::new_from_module(m);
        let mut body: Vec<RStmt> = Vec::new();
        one.walk(&mut |path: &[ASTNode]| {
            if let [ASTNode::Stmt(s)] = path {
                body.push((*s).clone());
            }
            true
        });
        let mut scope = Scope::new(true);
        for p in params {
            scope.declare(p);
        }
        let block = self.block(&body, &mut scope, lib).ok()?;
        if scope.nodes.saturating_mul(OPS_PER_NODE) >= self.max_operations {
            return None;
        }
        Some(Func { params: arity, slots: scope.slots, body: block })
    }

    /// Translates an expression's AST; `None` when it leaves the subset.
    pub fn code(&self, ast: &AST, lib: &Arc<Lib>) -> Option<Code> {
        let mut scope = Scope::new(false);
        let root = self.block_node(ast.statements(), &mut scope, lib).ok()?;
        if scope.nodes.saturating_mul(OPS_PER_NODE) >= self.max_operations {
            return None;
        }
        Some(Code {
            root,
            slots: scope.slots,
            lib: lib.clone(),
            max_string_size: self.max_string_size,
        })
    }

    /// A call of script function `name` with the account as its argument (a `script` criterion).
    pub fn call_with_account(&self, name: &str, lib: &Arc<Lib>) -> Option<Code> {
        let idx = *lib.index.get(&(name.to_string(), 1))?;
        lib.funcs.get(idx)?.as_ref()?;
        if self.max_call_levels < 2 {
            return None;
        }
        Some(Code {
            root: Node::User(idx, vec![Node::Const(V::Account)]),
            slots: 0,
            lib: lib.clone(),
            max_string_size: self.max_string_size,
        })
    }

    fn block(&self, stmts: &[RStmt], scope: &mut Scope, lib: &Lib) -> Tr<Block> {
        let mark = scope.names.len();
        let mut out = Vec::with_capacity(stmts.len());
        for s in stmts {
            scope.nodes += 1;
            match s {
                RStmt::Noop(..) => {}
                RStmt::Var(x, ..) => {
                    let (ident, init, _) = &**x;
                    let value = self.expr(init, scope, lib)?;
                    let slot = scope.declare(ident.name.clone());
                    out.push(Stmt::Let(slot, value));
                }
                RStmt::Expr(e) => out.push(Stmt::Expr(self.expr(e, scope, lib)?)),
                RStmt::FnCall(f, ..) => out.push(Stmt::Expr(self.call(f, None, scope, lib)?)),
                RStmt::If(fc, ..) => {
                    let cond = self.expr(&fc.expr, scope, lib)?;
                    let then = self.block_node(fc.body.statements(), scope, lib)?;
                    let other = self.block_node(fc.branch.statements(), scope, lib)?;
                    out.push(Stmt::Expr(Node::If(Box::new(cond), Box::new(then), Box::new(other))));
                }
                RStmt::Block(b) => {
                    out.push(Stmt::Expr(self.block_node(b.statements(), scope, lib)?))
                }
                RStmt::Switch(x, pos) => {
                    out.push(Stmt::Expr(self.switch(&x.0, &x.1, *pos, scope, lib)?))
                }
                RStmt::Return(Some(e), flags, _)
                    if !flags.contains(rhai::ASTFlags::BREAK) && scope.in_fn =>
                {
                    out.push(Stmt::Return(self.expr(e, scope, lib)?))
                }
                _ => return Err("statement kind not translated"),
            }
        }
        scope.names.truncate(mark);
        Ok(Block(out))
    }

    /// A block as one node: a block of one expression needs no block at run time (its
    /// `let`s, if any, were resolved to slots here).
    fn block_node(&self, stmts: &[RStmt], scope: &mut Scope, lib: &Lib) -> Tr<Node> {
        let mut b = self.block(stmts, scope, lib)?;
        Ok(match (b.0.len(), b.0.pop()) {
            (_, None) => Node::Const(V::Unit),
            (1, Some(Stmt::Expr(e))) => e,
            (_, Some(last)) => {
                b.0.push(last);
                Node::Block(b)
            }
        })
    }

    fn switch(
        &self,
        on: &RExpr,
        cases: &rhai::SwitchCasesCollection,
        pos: rhai::Position,
        scope: &mut Scope,
        lib: &Lib,
    ) -> Tr<Node> {
        let subject = self.expr(on, scope, lib)?;
        let slot = match &subject {
            Node::Input(slot, _) | Node::Prop(_, slot, _) => *slot,
            _ => return Err("switch subject is not a one_of input"),
        };
        let domain = self.domains.get(&slot).ok_or("not translated")?;
        if !cases.ranges.is_empty()
            || cases.expressions.iter().any(|b| !matches!(b.lhs, RExpr::BoolConstant(true, _)))
        {
            return Err("switch with conditions or ranges");
        }
        let mut arms = Vec::with_capacity(cases.expressions.len());
        for b in cases.expressions.iter() {
            arms.push(self.expr(&b.rhs, scope, lib)?);
        }
        // Ask rhai which arm each allowed value takes: the same switch with arm k replaced by k.
        let mut probe = cases.clone();
        for (k, b) in probe.expressions.iter_mut().enumerate() {
            b.rhs = RExpr::IntegerConstant(k as i64, pos);
        }
        let mut table = Vec::with_capacity(domain.len());
        for v in domain {
            let lit = match v {
                V::Str(s) => RExpr::StringConstant(s.clone(), pos),
                V::Int(i) => RExpr::IntegerConstant(*i, pos),
                V::Bool(b) => RExpr::BoolConstant(*b, pos),
                V::Unit => RExpr::Unit(pos),
                _ => return Err("switch subject value"),
            };
            let stmt = RStmt::Switch(Box::new((lit, probe.clone())), pos);
            let ast = AST::new([stmt], rhai::Module::new());
            let arm = match self.engine.eval_ast::<Dynamic>(&ast) {
                Ok(d) if d.is_unit() => None,
                Ok(d) => Some(
                    usize::try_from(d.as_int().map_err(|_| "switch probe value")?)
                        .map_err(|_| "switch probe value")?,
                ),
                Err(_) => return Err("switch probe failed"),
            };
            if arm.is_some_and(|a| a >= arms.len()) {
                return Err("switch arm index");
            }
            table.push((v.clone(), arm));
        }
        Ok(Node::Switch(Box::new(subject), table, arms))
    }

    fn expr(&self, e: &RExpr, scope: &mut Scope, lib: &Lib) -> Tr<Node> {
        scope.nodes += 1;
        Ok(match e {
            RExpr::BoolConstant(b, _) => Node::Const(V::Bool(*b)),
            RExpr::IntegerConstant(i, _) => Node::Const(V::Int(*i)),
            RExpr::FloatConstant(x, _) => Node::Const(V::Float(**x)),
            RExpr::StringConstant(s, _) => Node::Const(V::Str(s.clone())),
            RExpr::Unit(_) => Node::Const(V::Unit),
            RExpr::DynamicConstant(d, _) => {
                Node::Const(V::from_dynamic(d).ok_or("not translated")?)
            }
            RExpr::Variable(x, _, _) => {
                let (_, name, ns, _) = &**x;
                if !ns.is_empty() {
                    return Err("namespaced variable");
                }
                if let Some(slot) = scope.lookup(name) {
                    Node::Local(slot)
                } else if scope.in_fn {
                    return Err("global variable inside a function");
                } else {
                    match self.vars.get(name.as_str()) {
                        Some(Var::Input(i)) => {
                            Node::Input(*i, *self.kinds.get(*i).ok_or("input kind")?)
                        }
                        Some(v @ (Var::Score | Var::Tier)) => Node::Var(*v),
                        _ => return Err("variable not translated"),
                    }
                }
            }
            RExpr::Stmt(b) => self.block_node(b.statements(), scope, lib)?,
            RExpr::FnCall(f, _) => self.call(f, None, scope, lib)?,
            RExpr::Dot(x, flags, _) => {
                if flags.contains(rhai::ASTFlags::NEGATED) {
                    return Err("`?.`");
                }
                let lhs = self.expr(&x.lhs, scope, lib)?;
                match &x.rhs {
                    RExpr::Property(p, _) => {
                        let slot = *self.inputs.get(p.2.as_str()).ok_or("not translated")?;
                        Node::Prop(Box::new(lhs), slot, *self.kinds.get(slot).ok_or("input kind")?)
                    }
                    RExpr::MethodCall(f, _) => self.call(f, Some(lhs), scope, lib)?,
                    _ => return Err("dot form not translated"),
                }
            }
            RExpr::And(xs, _) => {
                Node::And(xs.iter().map(|x| self.expr(x, scope, lib)).collect::<Tr<_>>()?)
            }
            RExpr::Or(xs, _) => {
                Node::Or(xs.iter().map(|x| self.expr(x, scope, lib)).collect::<Tr<_>>()?)
            }
            RExpr::Coalesce(xs, _) => {
                Node::Coalesce(xs.iter().map(|x| self.expr(x, scope, lib)).collect::<Tr<_>>()?)
            }
            RExpr::InterpolatedString(xs, _) => {
                Node::Interp(xs.iter().map(|x| self.expr(x, scope, lib)).collect::<Tr<_>>()?)
            }
            _ => return Err("expression kind not translated"),
        })
    }

    fn call(
        &self,
        f: &rhai::FnCallExpr,
        object: Option<Node>,
        scope: &mut Scope,
        lib: &Lib,
    ) -> Tr<Node> {
        if !f.namespace.is_empty() || f.capture_parent_scope {
            return Err("namespaced call or closure");
        }
        let name = f.name.as_str();
        let mut args: Vec<Node> = Vec::with_capacity(f.args.len() + 1);
        let method = object.is_some();
        if let Some(o) = object {
            args.push(o);
        }
        for a in f.args.iter() {
            args.push(self.expr(a, scope, lib)?);
        }
        if f.op_token.is_some() && !method {
            let op = match (name, args.len()) {
                ("-", 1) => return Ok(Node::Neg(Box::new(args.remove(0)))),
                ("!", 1) => return Ok(Node::Not(Box::new(args.remove(0)))),
                ("+", 2) => Bin::Add,
                ("-", 2) => Bin::Sub,
                ("*", 2) => Bin::Mul,
                ("/", 2) => Bin::Div,
                ("%", 2) => Bin::Rem,
                ("==", 2) => Bin::Eq,
                ("!=", 2) => Bin::Ne,
                ("<", 2) => Bin::Lt,
                ("<=", 2) => Bin::Le,
                (">", 2) => Bin::Gt,
                (">=", 2) => Bin::Ge,
                _ => return Err("operator not translated"),
            };
            let b = args.pop().ok_or("not translated")?;
            let a = args.pop().ok_or("not translated")?;
            return Ok(Node::Bin(op, Box::new(a), Box::new(b)));
        }
        // Script functions come first in rhai's resolution, so they shadow built-ins.
        if let Some(&idx) = lib.index.get(&(name.to_string(), args.len())) {
            if method || scope.in_fn || self.max_call_levels < 2 {
                return Err("call of a script function inside a function or as a method");
            }
            let func =
                lib.funcs.get(idx).ok_or("not translated")?.as_ref().ok_or("not translated")?;
            scope.nodes += func.body.0.len() as u64 * 8;
            return Ok(Node::User(idx, args));
        }
        if self.lib_ast.iter_functions().any(|m| m.name == name) {
            // Same name, other arity: rhai would report it; let it.
            return Err("script function called with another arity");
        }
        let b = match (name, args.len()) {
            ("days_since", 1) => Builtin::DaysSince,
            ("days_until", 1) => Builtin::DaysUntil,
            ("to_float", 1) => Builtin::ToFloat,
            ("round", 1) => Builtin::Round,
            ("floor", 1) => Builtin::Floor,
            ("ceiling", 1) => Builtin::Ceiling,
            ("abs", 1) => Builtin::Abs,
            ("min", 2) => Builtin::Min,
            ("max", 2) => Builtin::Max,
            _ => return Err("function not translated"),
        };
        Ok(Node::Call(b, args))
    }
}

/// Why evaluation stopped early. `return`'s value waits in the frame, so results stay small
/// (`Result<V, Stop>` is a `V` plus nothing).
enum Stop {
    Fallback,
    Return,
}

impl From<Fallback> for Stop {
    fn from(_: Fallback) -> Self {
        Stop::Fallback
    }
}

type R = Result<V, Stop>;

struct Frame<'e, 'a> {
    env: &'e Env<'a>,
    locals: Vec<V>,
    lib: &'e Lib,
    max_string: usize,
    returned: Option<V>,
}

impl Code {
    /// Evaluates natively, or says to run rhai.
    pub fn eval(&self, env: &Env<'_>) -> Result<V, Fallback> {
        let mut f = Frame {
            env,
            locals: vec![V::Unit; self.slots],
            lib: &self.lib,
            max_string: self.max_string_size,
            returned: None,
        };
        match f.eval(&self.root) {
            Ok(v) => Ok(v),
            Err(Stop::Fallback) => Err(Fallback),
            // `return` outside a function is not translated; a stray one is rhai's to judge.
            Err(Stop::Return) => Err(Fallback),
        }
    }
}

/// rhai's float comparisons (checked build): relative to the larger magnitude, within
/// `f64::EPSILON` (func/builtin.rs, `impl_float`).
fn float_cmp(op: Bin, x: f64, y: f64) -> Option<bool> {
    let max = if x * y == 0.0 { 1.0 } else { x.abs().max(y.abs()) };
    if max == 0.0 {
        return Some(matches!(op, Bin::Eq | Bin::Ge | Bin::Le));
    }
    let e = f64::EPSILON;
    Some(match op {
        Bin::Eq => (x - y).abs() / max <= e,
        Bin::Ne => (x - y).abs() / max > e,
        Bin::Gt => (x - y) / max > e,
        Bin::Ge => (x - y) / max > -e,
        Bin::Lt => (y - x) / max > e,
        Bin::Le => (y - x) / max > -e,
        _ => return None,
    })
}

fn cmp<T: PartialOrd + ?Sized>(op: Bin, a: &T, b: &T) -> Option<bool> {
    Some(match op {
        Bin::Eq => a == b,
        Bin::Ne => a != b,
        Bin::Lt => a < b,
        Bin::Le => a <= b,
        Bin::Gt => a > b,
        Bin::Ge => a >= b,
        _ => return None,
    })
}

fn binary(op: Bin, a: V, b: V, max_string: usize) -> Result<V, Fallback> {
    use V::*;
    let r = match (&a, &b) {
        (Int(x), Int(y)) => {
            let (x, y) = (*x, *y);
            match op {
                Bin::Add => x.checked_add(y).map(Int),
                Bin::Sub => x.checked_sub(y).map(Int),
                Bin::Mul => x.checked_mul(y).map(Int),
                Bin::Div => {
                    if y == 0 {
                        None
                    } else {
                        x.checked_div(y).map(Int)
                    }
                }
                Bin::Rem => {
                    if y == 0 {
                        None
                    } else {
                        x.checked_rem(y).map(Int)
                    }
                }
                _ => cmp(op, &x, &y).map(Bool),
            }
        }
        (Float(_) | Int(_), Float(_) | Int(_)) => {
            let x = match a {
                Float(x) => x,
                Int(i) => i as f64,
                _ => return Err(Fallback),
            };
            let y = match b {
                Float(y) => y,
                Int(i) => i as f64,
                _ => return Err(Fallback),
            };
            match op {
                Bin::Add => Some(Float(x + y)),
                Bin::Sub => Some(Float(x - y)),
                Bin::Mul => Some(Float(x * y)),
                Bin::Div => Some(Float(x / y)),
                Bin::Rem => Some(Float(x % y)),
                _ => float_cmp(op, x, y).map(Bool),
            }
        }
        (Bool(x), Bool(y)) => cmp(op, x, y).map(Bool),
        (Str(x), Str(y)) => match op {
            Bin::Add => {
                if x.len() + y.len() > max_string {
                    None
                } else {
                    Some(Str(x + y))
                }
            }
            _ => cmp(op, x.as_str(), y.as_str()).map(Bool),
        },
        (Unit, Unit) => match op {
            Bin::Eq => Some(Bool(true)),
            Bin::Ne | Bin::Lt | Bin::Le | Bin::Gt | Bin::Ge => Some(Bool(false)),
            _ => None,
        },
        (Unit, Str(_)) | (Str(_), Unit) => match op {
            Bin::Add => Some(if let Str(_) = a { a.clone() } else { b.clone() }),
            Bin::Ne => Some(Bool(true)),
            Bin::Eq | Bin::Lt | Bin::Le | Bin::Gt | Bin::Ge => Some(Bool(false)),
            _ => None,
        },
        (Account, _) | (_, Account) => None,
        // Different types, not both numeric (rhai's default comparisons).
        _ => match op {
            Bin::Ne => Some(Bool(true)),
            Bin::Eq | Bin::Lt | Bin::Le | Bin::Gt | Bin::Ge => Some(Bool(false)),
            _ => None,
        },
    };
    r.ok_or(Fallback)
}

fn day(s: &V) -> Result<i64, Fallback> {
    match s {
        V::Str(s) => crate::date::parse_days(s).ok_or(Fallback),
        _ => Err(Fallback),
    }
}

fn builtin(b: Builtin, args: &[V], env: &Env<'_>) -> Result<V, Fallback> {
    use V::*;
    Ok(match (b, args) {
        (Builtin::DaysSince, [d]) => Int(env.as_of.checked_sub(day(d)?).ok_or(Fallback)?),
        (Builtin::DaysUntil, [d]) => Int(day(d)?.checked_sub(env.as_of).ok_or(Fallback)?),
        (Builtin::ToFloat, [Int(i)]) => Float(*i as f64),
        (Builtin::ToFloat, [Float(x)]) => Float(*x),
        (Builtin::Round, [Float(x)]) => Float(x.round()),
        (Builtin::Floor, [Float(x)]) => Float(x.floor()),
        (Builtin::Ceiling, [Float(x)]) => Float(x.ceil()),
        (Builtin::Abs, [Float(x)]) => Float(x.abs()),
        (Builtin::Abs, [Int(i)]) => Int(i.checked_abs().ok_or(Fallback)?),
        (Builtin::Max, [Int(x), Int(y)]) => Int(if x >= y { *x } else { *y }),
        (Builtin::Min, [Int(x), Int(y)]) => Int(if x <= y { *x } else { *y }),
        (Builtin::Max, [Float(x), Float(y)]) => Float(if x >= y { *x } else { *y }),
        (Builtin::Min, [Float(x), Float(y)]) => Float(if x <= y { *x } else { *y }),
        _ => return Err(Fallback),
    })
}

impl Frame<'_, '_> {
    fn eval(&mut self, n: &Node) -> R {
        Ok(match n {
            Node::Const(v) => v.clone(),
            Node::Input(i, kind) => read(self.env.values.get(*i).ok_or(Fallback)?, *kind)?,
            Node::Var(var) => match var {
                Var::Score => V::Float(self.env.score),
                Var::Tier => V::Str(self.env.tier.clone()),
                _ => return Err(Stop::Fallback),
            },
            Node::Local(s) => self.locals.get(*s).cloned().ok_or(Fallback)?,
            Node::Prop(obj, i, kind) => match self.eval(obj)? {
                V::Account => read(self.env.values.get(*i).ok_or(Fallback)?, *kind)?,
                _ => return Err(Stop::Fallback),
            },
            Node::Bin(op, a, b) => {
                let a = self.eval(a)?;
                let b = self.eval(b)?;
                binary(*op, a, b, self.max_string)?
            }
            Node::Neg(a) => match self.eval(a)? {
                V::Int(i) => V::Int(i.checked_neg().ok_or(Fallback)?),
                V::Float(x) => V::Float(-x),
                _ => return Err(Stop::Fallback),
            },
            Node::Not(a) => match self.eval(a)? {
                V::Bool(b) => V::Bool(!b),
                _ => return Err(Stop::Fallback),
            },
            Node::And(xs) => {
                for x in xs {
                    match self.eval(x)? {
                        V::Bool(true) => {}
                        V::Bool(false) => return Ok(V::Bool(false)),
                        _ => return Err(Stop::Fallback),
                    }
                }
                V::Bool(true)
            }
            Node::Or(xs) => {
                for x in xs {
                    match self.eval(x)? {
                        V::Bool(false) => {}
                        V::Bool(true) => return Ok(V::Bool(true)),
                        _ => return Err(Stop::Fallback),
                    }
                }
                V::Bool(false)
            }
            Node::Call(b, args) => self.call(*b, args)?,
            Node::User(idx, args) => self.user(*idx, args)?,
            Node::If(c, then, other) => match self.eval(c)? {
                V::Bool(true) => self.eval(then)?,
                V::Bool(false) => self.eval(other)?,
                _ => return Err(Stop::Fallback),
            },
            Node::Block(b) => self.block(b)?,
            Node::Interp(parts) => self.interp(parts)?,
            Node::Coalesce(xs) => self.coalesce(xs)?,
            Node::Switch(subject, table, arms) => self.switch(subject, table, arms)?,
        })
    }

    // The rarer nodes live in functions of their own so `eval`, which recurses for every
    // node, keeps a small stack frame.
    #[inline(never)]
    fn call(&mut self, b: Builtin, args: &[Node]) -> R {
        let mut vals: [V; 2] = [V::Unit, V::Unit];
        for (k, a) in args.iter().enumerate() {
            *vals.get_mut(k).ok_or(Fallback)? = self.eval(a)?;
        }
        Ok(builtin(b, vals.get(..args.len()).ok_or(Fallback)?, self.env)?)
    }

    #[inline(never)]
    fn user(&mut self, idx: usize, args: &[Node]) -> R {
        let func = self.lib.funcs.get(idx).and_then(Option::as_ref).ok_or(Fallback)?;
        if func.params != args.len() {
            return Err(Stop::Fallback);
        }
        let mut locals = vec![V::Unit; func.slots];
        for (k, a) in args.iter().enumerate() {
            *locals.get_mut(k).ok_or(Fallback)? = self.eval(a)?;
        }
        let mut inner = Frame {
            env: self.env,
            locals,
            lib: self.lib,
            max_string: self.max_string,
            returned: None,
        };
        match inner.block(&func.body) {
            Ok(v) => Ok(v),
            Err(Stop::Return) => inner.returned.take().ok_or(Stop::Fallback),
            Err(Stop::Fallback) => Err(Stop::Fallback),
        }
    }

    #[inline(never)]
    fn interp(&mut self, parts: &[Node]) -> R {
        let mut s = String::new();
        for p in parts {
            match self.eval(p)? {
                V::Str(x) => s.push_str(&x),
                V::Int(i) => s.push_str(&i.to_string()),
                V::Float(x) => s.push_str(&Dynamic::from_float(x).to_string()),
                _ => return Err(Stop::Fallback),
            }
            if s.len() > self.max_string {
                return Err(Stop::Fallback);
            }
        }
        Ok(V::Str(s.into()))
    }

    #[inline(never)]
    fn coalesce(&mut self, xs: &[Node]) -> R {
        let mut last = V::Unit;
        for x in xs {
            last = self.eval(x)?;
            if last != V::Unit {
                break;
            }
        }
        Ok(last)
    }

    #[inline(never)]
    fn switch(&mut self, subject: &Node, table: &[(V, Option<usize>)], arms: &[Node]) -> R {
        let v = self.eval(subject)?;
        let arm = table.iter().find(|(k, _)| *k == v).map(|(_, a)| *a).ok_or(Fallback)?;
        match arm {
            None => Ok(V::Unit),
            Some(a) => self.eval(arms.get(a).ok_or(Fallback)?),
        }
    }

    fn block(&mut self, b: &Block) -> R {
        let mut last = V::Unit;
        for s in &b.0 {
            last = match s {
                Stmt::Let(slot, e) => {
                    let v = self.eval(e)?;
                    *self.locals.get_mut(*slot).ok_or(Fallback)? = v;
                    V::Unit
                }
                Stmt::Expr(e) => self.eval(e)?,
                Stmt::Return(e) => {
                    self.returned = Some(self.eval(e)?);
                    return Err(Stop::Return);
                }
            };
        }
        Ok(last)
    }
}

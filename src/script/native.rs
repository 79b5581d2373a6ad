//! A native fast path for the rhai that policies are written in.
//!
//! Every rhai evaluation pays for function resolution, argument handling and `Dynamic`
//! juggling; a decision itself needs a few dozen operations. So when a policy loads, each
//! compiled expression (and each script function a criterion or template calls) is
//! translated, if it stays inside the subset — literals, inputs, `score`/`tier`, locals with
//! `let`, reassignment and `+= -= *= /= %= **=`, arithmetic and comparisons on the built-in
//! types, `&&`/`||`/`!`, `??`, `if`/`else if`/`else` as statements and values, `return`,
//! `switch` over any value (cases, `if` guards, integer ranges, default), `in` over array
//! literals and strings, `for` over ranges and small array literals, `while`, `do`, `loop`
//! with `break`/`continue`, interpolated strings, a list of pure built-ins in method and
//! function form, and non-recursive calls between script functions — into a tree that is
//! walked here without rhai. What stays outside is named (see `Policy::speed`).
//!
//! The contract is exactness, not a second dialect: the subset follows rhai 1.27's own rules
//! (checked integer arithmetic, its relative-epsilon float comparisons, `()` and mixed-type
//! comparisons, string ordering, its display of floats). Whenever a value leaves the cases
//! copied here — an overflow, a division by zero, a type rhai would reject or resolve through
//! a registered function, a string over the size limit, a loop whose operation count could
//! reach the operation limit — evaluation answers [`Fallback`] and the caller runs the same
//! expression through rhai, which then gives the result or the error it always gave. Nothing
//! here has side effects, so running rhai after a partial native run is safe. Operations are
//! counted as an upper bound of rhai's count (statically outside loops, per pass inside), so
//! a native run never completes where rhai would have stopped. Differential tests
//! (tests/native.rs, tests/native_corpus.rs) compare both paths over random inputs.

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

/// Why an expression runs through rhai when the fast path is switched off.
pub const OFF: &str = "the fast path is off (--no-native)";

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
    Pow,
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
    ToInt,
    ToString,
    Round,
    Floor,
    Ceiling,
    Sqrt,
    Abs,
    Min,
    Max,
    Len,
    Contains,
    StartsWith,
    EndsWith,
    ToUpper,
    ToLower,
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
    Switch(Box<Switch>),
    /// `x in [a, b, c]`: the array literal's items, compared as rhai's `contains` does.
    InArray(Box<Node>, Vec<Node>),
    Loop(Box<Loop>),
}

/// A `switch`, keyed as rhai keys it: the hash of the value (rhai keeps only the hashes of
/// the case values), then the integer ranges, then the default.
#[derive(Debug)]
struct Switch {
    subject: Node,
    /// Value hash → the arms with that value, in order.
    cases: Vec<(u64, Vec<usize>)>,
    /// (start, end, inclusive, arm), in order.
    ranges: Vec<(i64, i64, bool, usize)>,
    /// Per arm: its `if` condition (none: always) and its expression.
    arms: Vec<(Option<Node>, Node)>,
    default: Option<usize>,
}

#[derive(Debug)]
enum LoopKind {
    /// `loop { }` and `while true { }`.
    Forever,
    While(Node),
    /// `do { } while c` (`until`: `do { } until c`).
    Do(Node, bool),
    /// `for v in a..b` / `a..=b`, with an optional counter slot.
    Range {
        var: usize,
        counter: Option<usize>,
        from: Node,
        to: Node,
        inclusive: bool,
    },
    /// `for v in [a, b, c]`.
    Array {
        var: usize,
        counter: Option<usize>,
        items: Vec<Node>,
    },
}

#[derive(Debug)]
struct Loop {
    kind: LoopKind,
    body: Block,
    /// Upper bound on the operations rhai counts for one pass (condition and body).
    pass_ops: u64,
}

#[derive(Debug)]
enum Stmt {
    Let(usize, Node),
    Assign(usize, Node),
    /// `x op= e`: rhai's built-in op-assignments give what `x = x op e` gives for the types
    /// evaluated here (others fall back).
    OpAssign(Bin, usize, Node),
    Expr(Node),
    Return(Node),
    Break(Option<Node>),
    Continue,
}

#[derive(Debug, Default)]
struct Block(Vec<Stmt>);

#[derive(Debug)]
struct Func {
    params: usize,
    slots: usize,
    body: Block,
    /// Upper bound on the operations of one call outside its loops' passes.
    ops: u64,
    /// Calls nested inside it, itself included.
    depth: usize,
}

/// Script functions translated once per policy, shared by its expressions.
#[derive(Debug, Default)]
pub struct Lib {
    funcs: Vec<Result<Func, String>>,
    index: HashMap<(String, usize), usize>,
}

/// A translated expression.
#[derive(Debug)]
pub struct Code {
    root: Node,
    slots: usize,
    /// Upper bound on the operations outside loop passes (counted as they run).
    ops: u64,
    max_operations: u64,
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
/// What a script function call adds to its body (rhai counts the call, its arguments and
/// the function's entry).
const OPS_PER_CALL: u64 = 8;
/// Items of an array literal iterated or searched natively.
const MAX_ARRAY_ITEMS: usize = 64;
/// Locals of one function or expression (rhai's own limit is 256 variables in scope).
const MAX_SLOTS: usize = 128;

struct Scope {
    names: Vec<(ImmutableString, usize, bool)>,
    slots: usize,
    /// Inside a function: no global variables.
    in_fn: bool,
    /// Loops around the current statement (for `break` / `continue`).
    loops: usize,
    nodes: u64,
    /// Extra operations of the script functions called (their bodies).
    call_ops: u64,
    depth: usize,
}

impl Scope {
    fn new(in_fn: bool) -> Self {
        Scope { names: Vec::new(), slots: 0, in_fn, loops: 0, nodes: 0, call_ops: 0, depth: 0 }
    }
    fn lookup(&self, name: &str) -> Option<(usize, bool)> {
        self.names.iter().rev().find(|(n, _, _)| n.as_str() == name).map(|&(_, s, c)| (s, c))
    }
    fn declare(&mut self, name: ImmutableString, constant: bool) -> Tr<usize> {
        let s = self.slots;
        self.slots += 1;
        if self.slots > MAX_SLOTS {
            return Err("more local variables than the fast path keeps".into());
        }
        self.names.push((name, s, constant));
        Ok(s)
    }
    fn ops(&self) -> u64 {
        self.nodes.saturating_mul(OPS_PER_NODE).saturating_add(self.call_ops)
    }
}

/// A translation, or why the subset does not cover it (shown by `tierwise check
/// --explain-speed`).
type Tr<T> = Result<T, String>;

fn why<T>(s: impl Into<String>) -> Tr<T> {
    Err(s.into())
}

/// rhai's hash of a `switch` value: its `Dynamic` hashed with the hasher rhai uses. Checked
/// once against a switch rhai compiled, so a different rhai build turns native `switch` off
/// instead of choosing a wrong arm.
fn switch_hash(v: &Dynamic) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = match rhai::config::hashing::get_hashing_seed() {
        Some([a, b, c, d]) if (a | b | c | d) != 0 => {
            ahash::RandomState::with_seeds(*a, *b, *c, *d).build_hasher()
        }
        _ => ahash::AHasher::default(),
    };
    v.hash(&mut h);
    h.finish()
}

fn switch_hash_agrees() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        let e = Engine::new_raw();
        let Ok(ast) =
            e.compile("fn f(v) { switch v { 7 => 1, \"key\" => 2, true => 3, 2.5 => 4 } }")
        else {
            return false;
        };
        let mut found = None;
        ast.walk(&mut |path: &[ASTNode]| {
            if let Some(ASTNode::Stmt(RStmt::Switch(x, _))) = path.last() {
                found = Some(x.1.cases.keys().copied().collect::<Vec<u64>>());
            }
            true
        });
        let Some(keys) = found else { return false };
        let want = [
            Dynamic::from_int(7),
            Dynamic::from(ImmutableString::from("key")),
            Dynamic::from_bool(true),
            Dynamic::from_float(2.5),
        ];
        keys.len() == want.len() && want.iter().all(|v| keys.contains(&switch_hash(v)))
    })
}

/// What building the library needs while functions are translated on demand.
struct LibState {
    lib: Lib,
    /// Per function: being translated (a call back into it is recursion).
    busy: Vec<bool>,
    done: Vec<bool>,
}

impl<'a> Builder<'a> {
    /// Translates all script functions (those that fit the subset), callees first.
    pub fn lib(&self) -> Lib {
        let mut st = LibState { lib: Lib::default(), busy: Vec::new(), done: Vec::new() };
        let metas: Vec<(String, usize, bool)> = self
            .lib_ast
            .iter_functions()
            .map(|m| (m.name.to_string(), m.params.len(), m.this_type.is_some()))
            .collect();
        for (name, arity, is_method) in &metas {
            let idx = st.lib.funcs.len();
            st.lib.index.insert((name.clone(), *arity), idx);
            st.lib.funcs.push(if *is_method {
                why("a method-style script function (`this`)")
            } else {
                why("not translated")
            });
            st.busy.push(false);
            st.done.push(*is_method);
        }
        let st = std::cell::RefCell::new(st);
        for (idx, (name, arity, _)) in metas.iter().enumerate() {
            self.ensure(&st, idx, name, *arity);
        }
        st.into_inner().lib
    }

    fn ensure(&self, st: &std::cell::RefCell<LibState>, idx: usize, name: &str, arity: usize) {
        {
            let mut s = st.borrow_mut();
            if s.done.get(idx).copied().unwrap_or(true) {
                return;
            }
            if let Some(b) = s.busy.get_mut(idx) {
                *b = true;
            }
        }
        let f = self.func(name, arity, st);
        let mut s = st.borrow_mut();
        if let Some(slot) = s.lib.funcs.get_mut(idx) {
            *slot = f;
        }
        if let Some(b) = s.busy.get_mut(idx) {
            *b = false;
        }
        if let Some(d) = s.done.get_mut(idx) {
            *d = true;
        }
    }

    fn func(&self, name: &str, arity: usize, st: &std::cell::RefCell<LibState>) -> Tr<Func> {
        let def = self
            .lib_ast
            .shared_lib()
            .iter_script_fn_info()
            .find(|f| f.2 == name && f.3 == arity)
            .map(|f| f.4.clone())
            .ok_or("function not found")?;
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
            scope.declare(p, false)?;
        }
        let block = self.block(&body, &mut scope, &Ctx::Building(st))?;
        let ops = scope.ops();
        if ops >= self.max_operations {
            return why("too many operations for the operation limit");
        }
        Ok(Func { params: arity, slots: scope.slots, body: block, ops, depth: scope.depth + 1 })
    }

    /// Translates an expression's AST, or says why it stays with rhai.
    pub fn code(&self, ast: &AST, lib: &Arc<Lib>) -> Tr<Code> {
        let mut scope = Scope::new(false);
        let root = self.block_node(ast.statements(), &mut scope, &Ctx::Built(lib))?;
        self.finish(root, &scope, lib)
    }

    fn finish(&self, root: Node, scope: &Scope, lib: &Arc<Lib>) -> Tr<Code> {
        let ops = scope.ops();
        if ops >= self.max_operations {
            return why("too many operations for the operation limit");
        }
        // rhai's call depth counts from the expression (level 0): a chain of `depth` nested
        // calls needs `depth` levels; one spare keeps clear of the edge.
        if scope.depth > 0 && scope.depth + 1 > self.max_call_levels {
            return why("script calls nested too deep for the call depth limit");
        }
        Ok(Code {
            root,
            slots: scope.slots,
            ops,
            max_operations: self.max_operations,
            lib: lib.clone(),
            max_string_size: self.max_string_size,
        })
    }

    /// A call of script function `name` with the account as its argument (a `script` criterion).
    pub fn call_with_account(&self, name: &str, lib: &Arc<Lib>) -> Tr<Code> {
        let idx = *lib
            .index
            .get(&(name.to_string(), 1))
            .ok_or_else(|| format!("`{name}` is not a one-argument script function"))?;
        let func = match lib.funcs.get(idx) {
            Some(Ok(f)) => f,
            Some(Err(e)) => return why(format!("function `{name}`: {e}")),
            None => return why("not translated"),
        };
        let mut scope = Scope::new(false);
        scope.nodes = 1;
        scope.call_ops = func.ops + OPS_PER_CALL;
        scope.depth = func.depth;
        self.finish(Node::User(idx, vec![Node::Const(V::Account)]), &scope, lib)
    }

    fn block(&self, stmts: &[RStmt], scope: &mut Scope, lib: &Ctx<'_>) -> Tr<Block> {
        let mark = scope.names.len();
        let mut out = Vec::with_capacity(stmts.len());
        for s in stmts {
            scope.nodes += 1;
            match s {
                RStmt::Noop(..) => {}
                RStmt::Var(x, flags, _) => {
                    let (ident, init, _) = &**x;
                    if flags.contains(rhai::ASTFlags::EXPORTED) {
                        return why("`export`");
                    }
                    let value = self.expr(init, scope, lib)?;
                    let slot = scope
                        .declare(ident.name.clone(), flags.contains(rhai::ASTFlags::CONSTANT))?;
                    out.push(Stmt::Let(slot, value));
                }
                RStmt::Assignment(x) => {
                    let (op, bx) = &**x;
                    let RExpr::Variable(v, _, _) = &bx.lhs else {
                        return why("assignment to an index or a property");
                    };
                    let name = &v.1;
                    let Some((slot, constant)) = scope.lookup(name) else {
                        return why(format!("assignment to `{name}`, which is not a local"));
                    };
                    if constant {
                        return why("assignment to a constant");
                    }
                    let value = self.expr(&bx.rhs, scope, lib)?;
                    if op.is_op_assignment() {
                        let bin = match op.get_op_assignment_info().map(|i| i.5) {
                            Some("+") => Bin::Add,
                            Some("-") => Bin::Sub,
                            Some("*") => Bin::Mul,
                            Some("/") => Bin::Div,
                            Some("%") => Bin::Rem,
                            Some("**") => Bin::Pow,
                            _ => return why("this compound assignment (only += -= *= /= %= **=)"),
                        };
                        out.push(Stmt::OpAssign(bin, slot, value));
                    } else {
                        out.push(Stmt::Assign(slot, value));
                    }
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
                RStmt::Switch(x, _) => out.push(Stmt::Expr(self.switch(&x.0, &x.1, scope, lib)?)),
                RStmt::Return(e, flags, _) if !flags.contains(rhai::ASTFlags::BREAK) => {
                    let v = match e {
                        Some(e) => self.expr(e, scope, lib)?,
                        None => Node::Const(V::Unit),
                    };
                    out.push(Stmt::Return(v))
                }
                RStmt::Return(..) => return why("`throw`"),
                RStmt::BreakLoop(e, flags, _) => {
                    if scope.loops == 0 {
                        return why("`break` outside a loop");
                    }
                    if flags.contains(rhai::ASTFlags::BREAK) {
                        let v = match e {
                            Some(e) => Some(self.expr(e, scope, lib)?),
                            None => None,
                        };
                        out.push(Stmt::Break(v));
                    } else {
                        out.push(Stmt::Continue);
                    }
                }
                RStmt::While(x, _) => {
                    let is_forever =
                        matches!(x.expr, RExpr::Unit(..) | RExpr::BoolConstant(true, _));
                    let l = self.a_loop(scope, lib, |b, scope| {
                        let kind = if is_forever {
                            LoopKind::Forever
                        } else {
                            LoopKind::While(b.expr(&x.expr, scope, lib)?)
                        };
                        Ok((kind, b.block(x.body.statements(), scope, lib)?))
                    })?;
                    out.push(Stmt::Expr(l));
                }
                RStmt::Do(x, flags, _) => {
                    let until = flags.contains(rhai::ASTFlags::NEGATED);
                    let l = self.a_loop(scope, lib, |b, scope| {
                        let body = b.block(x.body.statements(), scope, lib)?;
                        Ok((LoopKind::Do(b.expr(&x.expr, scope, lib)?, until), body))
                    })?;
                    out.push(Stmt::Expr(l));
                }
                RStmt::For(x, _) => out.push(Stmt::Expr(self.for_loop(x, scope, lib)?)),
                RStmt::Import(..) => return why("`import`"),
                RStmt::TryCatch(..) => return why("`try` / `catch`"),
                _ => return why("this kind of statement"),
            }
        }
        scope.names.truncate(mark);
        Ok(Block(out))
    }

    /// A loop: its condition and body count per pass, not once.
    fn a_loop(
        &self,
        scope: &mut Scope,
        _lib: &Ctx<'_>,
        f: impl FnOnce(&Self, &mut Scope) -> Tr<(LoopKind, Block)>,
    ) -> Tr<Node> {
        let (nodes, calls) = (scope.nodes, scope.call_ops);
        scope.nodes = 0;
        scope.call_ops = 0;
        scope.loops += 1;
        let r = f(self, scope);
        scope.loops -= 1;
        let pass_ops = scope.ops().saturating_add(OPS_PER_NODE * 2);
        scope.nodes = nodes + 1;
        scope.call_ops = calls;
        let (kind, body) = r?;
        Ok(Node::Loop(Box::new(Loop { kind, body, pass_ops })))
    }

    fn for_loop(
        &self,
        x: &(rhai::Ident, Option<rhai::Ident>, rhai::FlowControl),
        scope: &mut Scope,
        lib: &Ctx<'_>,
    ) -> Tr<Node> {
        let (var, counter, fc) = x;
        enum Src {
            Range(Node, Node, bool),
            Array(Vec<Node>),
        }
        // The iterable is evaluated once, before the loop's variables exist.
        let src = match &fc.expr {
            RExpr::FnCall(f, _)
                if f.namespace.is_empty()
                    && f.args.len() == 2
                    && matches!(f.name.as_str(), ".." | "..=" | "range") =>
            {
                if self.lib_ast.iter_functions().any(|m| m.name == f.name.as_str()) {
                    return why("a script function named like a range");
                }
                scope.nodes += 1;
                let from = self.expr(&f.args[0], scope, lib)?;
                let to = self.expr(&f.args[1], scope, lib)?;
                Src::Range(from, to, f.name.as_str() == "..=")
            }
            RExpr::Array(items, _) if items.len() <= MAX_ARRAY_ITEMS => {
                scope.nodes += 1;
                Src::Array(items.iter().map(|i| self.expr(i, scope, lib)).collect::<Tr<_>>()?)
            }
            RExpr::DynamicConstant(d, _) if d.is_array() => {
                scope.nodes += 1;
                Src::Array(const_items(d)?)
            }
            RExpr::DynamicConstant(d, _) if d.is::<std::ops::Range<i64>>() => {
                scope.nodes += 1;
                let r = d.clone().cast::<std::ops::Range<i64>>();
                Src::Range(Node::Const(V::Int(r.start)), Node::Const(V::Int(r.end)), false)
            }
            RExpr::DynamicConstant(d, _) if d.is::<std::ops::RangeInclusive<i64>>() => {
                scope.nodes += 1;
                let r = d.clone().cast::<std::ops::RangeInclusive<i64>>();
                Src::Range(Node::Const(V::Int(*r.start())), Node::Const(V::Int(*r.end())), true)
            }
            _ => return why("`for` over something other than a range or an array literal"),
        };
        let mark = scope.names.len();
        let counter_slot = match counter {
            Some(c) => Some(scope.declare(c.name.clone(), false)?),
            None => None,
        };
        let var_slot = scope.declare(var.name.clone(), false)?;
        let l = self.a_loop(scope, lib, |b, scope| {
            let body = b.block(fc.body.statements(), scope, lib)?;
            let kind = match src {
                Src::Range(from, to, inclusive) => {
                    LoopKind::Range { var: var_slot, counter: counter_slot, from, to, inclusive }
                }
                Src::Array(items) => {
                    LoopKind::Array { var: var_slot, counter: counter_slot, items }
                }
            };
            Ok((kind, body))
        });
        scope.names.truncate(mark);
        l
    }

    /// A block as one node: a block of one expression needs no block at run time (its
    /// `let`s, if any, were resolved to slots here).
    fn block_node(&self, stmts: &[RStmt], scope: &mut Scope, lib: &Ctx<'_>) -> Tr<Node> {
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
        scope: &mut Scope,
        lib: &Ctx<'_>,
    ) -> Tr<Node> {
        if !switch_hash_agrees() {
            return why("`switch` (this rhai build hashes case values differently)");
        }
        let subject = self.expr(on, scope, lib)?;
        let mut arms = Vec::with_capacity(cases.expressions.len());
        for b in cases.expressions.iter() {
            let cond = match &b.lhs {
                RExpr::BoolConstant(true, _) => None,
                c => Some(self.expr(c, scope, lib)?),
            };
            arms.push((cond, self.expr(&b.rhs, scope, lib)?));
        }
        let mut table: Vec<(u64, Vec<usize>)> =
            cases.cases.iter().map(|(h, c)| (*h, c.blocks.iter().copied().collect())).collect();
        table.sort_by_key(|(h, _)| *h);
        let ranges: Vec<(i64, i64, bool, usize)> = cases
            .ranges
            .iter()
            .map(|r| match r {
                rhai::RangeCase::ExclusiveInt(x, n) => (x.start, x.end, false, *n),
                rhai::RangeCase::InclusiveInt(x, n) => (*x.start(), *x.end(), true, *n),
            })
            .collect();
        if arms.len() != cases.expressions.len()
            || table
                .iter()
                .flat_map(|(_, v)| v)
                .chain(cases.def_case.iter())
                .any(|&i| i >= arms.len())
            || ranges.iter().any(|r| r.3 >= arms.len())
        {
            return why("switch arm index");
        }
        Ok(Node::Switch(Box::new(Switch {
            subject,
            cases: table,
            ranges,
            arms,
            default: cases.def_case,
        })))
    }

    fn expr(&self, e: &RExpr, scope: &mut Scope, lib: &Ctx<'_>) -> Tr<Node> {
        scope.nodes += 1;
        Ok(match e {
            RExpr::BoolConstant(b, _) => Node::Const(V::Bool(*b)),
            RExpr::IntegerConstant(i, _) => Node::Const(V::Int(*i)),
            RExpr::FloatConstant(x, _) => Node::Const(V::Float(**x)),
            RExpr::StringConstant(s, _) => Node::Const(V::Str(s.clone())),
            RExpr::Unit(_) => Node::Const(V::Unit),
            RExpr::DynamicConstant(d, _) if d.is_array() => return why("an array value"),
            RExpr::DynamicConstant(d, _) if d.is_map() => return why("an object map"),
            RExpr::DynamicConstant(d, _) => {
                Node::Const(V::from_dynamic(d).ok_or("a constant of another type")?)
            }
            RExpr::Variable(x, _, _) => {
                let (_, name, ns, _) = &**x;
                if !ns.is_empty() {
                    return why("a module variable (`m::x`)");
                }
                if let Some((slot, _)) = scope.lookup(name) {
                    Node::Local(slot)
                } else if scope.in_fn {
                    return why(format!("`{name}` read inside a function"));
                } else {
                    match self.vars.get(name.as_str()) {
                        Some(Var::Input(i)) => {
                            Node::Input(*i, *self.kinds.get(*i).ok_or("input kind")?)
                        }
                        Some(v @ (Var::Score | Var::Tier)) => Node::Var(*v),
                        _ => return why(format!("the portfolio figure `{name}`")),
                    }
                }
            }
            RExpr::Stmt(b) => self.block_node(b.statements(), scope, lib)?,
            RExpr::FnCall(f, _) => self.call(f, None, scope, lib)?,
            RExpr::Dot(x, flags, _) => {
                if flags.contains(rhai::ASTFlags::NEGATED) {
                    return why("`?.`");
                }
                if let RExpr::MethodCall(f, _) = &x.rhs
                    && is_array_literal(&x.lhs)
                    && f.name.as_str() == "contains"
                    && f.args.len() == 1
                {
                    // `[a, b].contains(x)`: as `x in [a, b]`.
                    return self.in_array(&x.lhs, &f.args[0], scope, lib);
                }
                let lhs = self.expr(&x.lhs, scope, lib)?;
                self.chain(lhs, &x.rhs, scope, lib)?
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
            RExpr::Array(..) => return why("an array value"),
            RExpr::Map(..) => return why("an object map"),
            RExpr::Index(..) => return why("indexing (`a[i]`)"),
            RExpr::CharConstant(..) => return why("a character literal"),
            _ => return why("this kind of expression"),
        })
    }

    /// The right side of `a.b.c()`: rhai nests it as `a . (b . c())`.
    fn chain(&self, obj: Node, rhs: &RExpr, scope: &mut Scope, lib: &Ctx<'_>) -> Tr<Node> {
        scope.nodes += 1;
        match rhs {
            RExpr::Property(p, _) => {
                let name = p.2.as_str();
                let slot =
                    *self.inputs.get(name).ok_or_else(|| format!("the property `.{name}`"))?;
                Ok(Node::Prop(Box::new(obj), slot, *self.kinds.get(slot).ok_or("input kind")?))
            }
            RExpr::MethodCall(f, _) => self.call(f, Some(obj), scope, lib),
            RExpr::Dot(x, flags, _) => {
                if flags.contains(rhai::ASTFlags::NEGATED) {
                    return why("`?.`");
                }
                let inner = self.chain(obj, &x.lhs, scope, lib)?;
                self.chain(inner, &x.rhs, scope, lib)
            }
            RExpr::Index(..) => why("indexing (`a[i]`)"),
            _ => why("this property chain"),
        }
    }

    fn call(
        &self,
        f: &rhai::FnCallExpr,
        object: Option<Node>,
        scope: &mut Scope,
        lib: &Ctx<'_>,
    ) -> Tr<Node> {
        let name = f.name.as_str();
        if !f.namespace.is_empty() {
            return why(format!("the module function `{}{name}`", f.namespace));
        }
        if f.capture_parent_scope {
            return why("a call capturing its scope (`f!()`)");
        }
        let method = object.is_some();
        let arity = f.args.len() + usize::from(method);
        // `x in [..]` is `contains([..], x)`: the array literal stays a list of nodes.
        if name == "contains" && !method && f.args.len() == 2 && is_array_literal(&f.args[0]) {
            return self.in_array(&f.args[0], &f.args[1], scope, lib);
        }
        let mut args: Vec<Node> = Vec::with_capacity(arity);
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
                ("+", 1) => return why("unary `+`"),
                ("+", 2) => Bin::Add,
                ("-", 2) => Bin::Sub,
                ("*", 2) => Bin::Mul,
                ("/", 2) => Bin::Div,
                ("%", 2) => Bin::Rem,
                ("**", 2) => Bin::Pow,
                ("==", 2) => Bin::Eq,
                ("!=", 2) => Bin::Ne,
                ("<", 2) => Bin::Lt,
                ("<=", 2) => Bin::Le,
                (">", 2) => Bin::Gt,
                (">=", 2) => Bin::Ge,
                ("contains", 2) => {
                    // `s in t` is `t.contains(s)`: a substring test.
                    return Ok(Node::Call(Builtin::Contains, args));
                }
                (op, _) => return why(format!("the operator `{op}`")),
            };
            let b = args.pop().ok_or("operand")?;
            let a = args.pop().ok_or("operand")?;
            return Ok(Node::Bin(op, Box::new(a), Box::new(b)));
        }
        // Script functions come first in rhai's resolution, so they shadow built-ins.
        if let Some(idx) = lib.index(name, args.len()) {
            if method {
                return why(format!("`{name}` called as a method"));
            }
            let (ops, depth) = lib.func_cost(self, idx, name, args.len())?;
            scope.call_ops = scope.call_ops.saturating_add(ops + OPS_PER_CALL);
            scope.depth = scope.depth.max(depth);
            return Ok(Node::User(idx, args));
        }
        if self.lib_ast.iter_functions().any(|m| m.name == name) {
            // Same name, other arity: rhai would report it; let it.
            return why(format!("`{name}` called with another number of arguments"));
        }
        let b = match (name, args.len()) {
            ("days_since", 1) => Builtin::DaysSince,
            ("days_until", 1) => Builtin::DaysUntil,
            ("to_float", 1) => Builtin::ToFloat,
            ("to_int", 1) => Builtin::ToInt,
            ("to_string", 1) => Builtin::ToString,
            ("round", 1) => Builtin::Round,
            ("floor", 1) => Builtin::Floor,
            ("ceiling", 1) => Builtin::Ceiling,
            ("sqrt", 1) => Builtin::Sqrt,
            ("abs", 1) => Builtin::Abs,
            ("min", 2) => Builtin::Min,
            ("max", 2) => Builtin::Max,
            ("len", 1) => Builtin::Len,
            ("contains", 2) => Builtin::Contains,
            ("starts_with", 2) => Builtin::StartsWith,
            ("ends_with", 2) => Builtin::EndsWith,
            ("to_upper", 1) => Builtin::ToUpper,
            ("to_lower", 1) => Builtin::ToLower,
            _ => return why(format!("the function `{name}` ({} argument(s))", args.len())),
        };
        Ok(Node::Call(b, args))
    }
}

impl Builder<'_> {
    /// `x in [a, b]`, `contains([a, b], x)`, `[a, b].contains(x)`.
    fn in_array(&self, arr: &RExpr, x: &RExpr, scope: &mut Scope, lib: &Ctx<'_>) -> Tr<Node> {
        if self.lib_ast.iter_functions().any(|m| m.name == "contains") {
            return why("a script function named `contains`");
        }
        let items = match arr {
            RExpr::Array(items, _) if items.len() <= MAX_ARRAY_ITEMS => {
                items.iter().map(|i| self.expr(i, scope, lib)).collect::<Tr<Vec<_>>>()?
            }
            RExpr::DynamicConstant(d, _) if d.is_array() => const_items(d)?,
            _ => return why("`in` over an array of more than 64 items"),
        };
        // rhai compares item by item with `==`, a call each.
        scope.nodes += 2 * items.len() as u64 + 2;
        let x = self.expr(x, scope, lib)?;
        Ok(Node::InArray(Box::new(x), items))
    }
}

fn is_array_literal(e: &RExpr) -> bool {
    match e {
        RExpr::Array(..) => true,
        RExpr::DynamicConstant(d, _) => d.is_array(),
        _ => false,
    }
}

/// The items of a constant array (the optimizer folds literal arrays of constants).
fn const_items(d: &Dynamic) -> Tr<Vec<Node>> {
    let arr = d.clone().into_array().map_err(|_| "array")?;
    if arr.len() > MAX_ARRAY_ITEMS {
        return why("an array literal of more than 64 items");
    }
    arr.iter()
        .map(|x| {
            V::from_dynamic(x).map(Node::Const).ok_or_else(|| "an array of other values".into())
        })
        .collect()
}

/// The library as expressions see it: being built (functions translated on demand, so a
/// callee is ready before its caller) or built.
enum Ctx<'l> {
    Building(&'l std::cell::RefCell<LibState>),
    Built(&'l Lib),
}

impl Ctx<'_> {
    fn index(&self, name: &str, arity: usize) -> Option<usize> {
        let key = (name.to_string(), arity);
        match self {
            Ctx::Building(st) => st.borrow().lib.index.get(&key).copied(),
            Ctx::Built(lib) => lib.index.get(&key).copied(),
        }
    }

    /// The cost of calling function `idx` (translating it first if needed).
    fn func_cost(&self, b: &Builder<'_>, idx: usize, name: &str, arity: usize) -> Tr<(u64, usize)> {
        let get = |lib: &Lib| match lib.funcs.get(idx) {
            Some(Ok(f)) => Ok((f.ops, f.depth)),
            Some(Err(e)) => why(format!("function `{name}`: {e}")),
            None => why("not translated"),
        };
        match self {
            Ctx::Built(lib) => get(lib),
            Ctx::Building(st) => {
                if st.borrow().busy.get(idx).copied().unwrap_or(false) {
                    return why(format!("`{name}` calls itself (recursion)"));
                }
                b.ensure(st, idx, name, arity);
                get(&st.borrow().lib)
            }
        }
    }
}

/// Why evaluation stopped early. `return`'s and `break`'s values wait in the frame, so results
/// stay small (`Result<V, Stop>` is a `V` plus nothing).
enum Stop {
    Fallback,
    Return,
    Break,
    Continue,
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
    /// `return` or `break` value on its way out.
    returned: Option<V>,
    /// Operations so far (an upper bound of rhai's count), and the limit.
    ops: u64,
    max_ops: u64,
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
            ops: self.ops,
            max_ops: self.max_operations,
        };
        match f.eval(&self.root) {
            Ok(v) => Ok(v),
            // A top-level `return` ends the expression with its value, as in rhai.
            Err(Stop::Return) => f.returned.take().ok_or(Fallback),
            Err(_) => Err(Fallback),
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

/// `x ** y` on integers (rhai's `power`): a negative or huge exponent, or an overflow, is an
/// error there, so a fallback here.
fn int_pow(x: i64, y: i64) -> Option<i64> {
    if y < 0 {
        return None;
    }
    x.checked_pow(u32::try_from(y).ok()?)
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
                Bin::Pow => int_pow(x, y).map(Int),
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
                Bin::Pow => Some(Float(x.powf(y))),
                _ => float_cmp(op, x, y).map(Bool),
            }
        }
        (Bool(x), Bool(y)) => match op {
            Bin::Pow => None,
            _ => cmp(op, x, y).map(Bool),
        },
        (Str(x), Str(y)) => match op {
            Bin::Add => {
                if x.len() + y.len() > max_string {
                    None
                } else {
                    Some(Str(x + y))
                }
            }
            Bin::Pow => None,
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

/// rhai's display of a value (`to_string`, and `${..}` in interpolated strings).
fn display(v: &V, out: &mut String) -> Result<(), Fallback> {
    match v {
        V::Str(x) => out.push_str(x),
        V::Int(i) => {
            use std::fmt::Write;
            let _ = write!(out, "{i}");
        }
        V::Float(x) => {
            use std::fmt::Write;
            let _ = write!(out, "{}", Dynamic::from_float(*x));
        }
        V::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        V::Unit | V::Account => return Err(Fallback),
    }
    Ok(())
}

fn builtin(b: Builtin, args: &[V], env: &Env<'_>, max_string: usize) -> Result<V, Fallback> {
    use V::*;
    Ok(match (b, args) {
        (Builtin::DaysSince, [d]) => Int(env.as_of.checked_sub(day(d)?).ok_or(Fallback)?),
        (Builtin::DaysUntil, [d]) => Int(day(d)?.checked_sub(env.as_of).ok_or(Fallback)?),
        (Builtin::ToFloat, [Int(i)]) => Float(*i as f64),
        (Builtin::ToFloat, [Float(x)]) => Float(*x),
        (Builtin::ToInt, [Int(i)]) => Int(*i),
        (Builtin::ToInt, [Float(x)]) => {
            if *x > (i64::MAX as f64) || *x < (i64::MIN as f64) {
                return Err(Fallback);
            }
            Int(x.trunc() as i64)
        }
        (Builtin::ToString, [v]) => {
            let mut s = String::new();
            display(v, &mut s)?;
            Str(s.into())
        }
        (Builtin::Round, [Float(x)]) => Float(x.round()),
        (Builtin::Floor, [Float(x)]) => Float(x.floor()),
        (Builtin::Ceiling, [Float(x)]) => Float(x.ceil()),
        (Builtin::Sqrt, [Float(x)]) => Float(x.sqrt()),
        (Builtin::Abs, [Float(x)]) => Float(x.abs()),
        (Builtin::Abs, [Int(i)]) => Int(i.checked_abs().ok_or(Fallback)?),
        (Builtin::Max, [Int(x), Int(y)]) => Int(if x >= y { *x } else { *y }),
        (Builtin::Min, [Int(x), Int(y)]) => Int(if x <= y { *x } else { *y }),
        (Builtin::Max | Builtin::Min, [x @ (Int(_) | Float(_)), y @ (Int(_) | Float(_))]) => {
            let f = |v: &V| match v {
                Int(i) => *i as f64,
                Float(x) => *x,
                _ => f64::NAN,
            };
            let (x, y) = (f(x), f(y));
            Float(match b {
                Builtin::Max => {
                    if x >= y {
                        x
                    } else {
                        y
                    }
                }
                _ => {
                    if x <= y {
                        x
                    } else {
                        y
                    }
                }
            })
        }
        (Builtin::Len, [Str(s)]) => Int(i64::try_from(s.chars().count()).unwrap_or(i64::MAX)),
        (Builtin::Contains, [Str(s), Str(t)]) => Bool(s.contains(t.as_str())),
        (Builtin::StartsWith, [Str(s), Str(t)]) => Bool(s.starts_with(t.as_str())),
        (Builtin::EndsWith, [Str(s), Str(t)]) => Bool(s.ends_with(t.as_str())),
        (Builtin::ToUpper, [Str(s)]) => {
            if s.chars().all(char::is_uppercase) {
                Str(s.clone())
            } else {
                let u = s.to_uppercase();
                if u.len() > max_string {
                    return Err(Fallback);
                }
                Str(u.into())
            }
        }
        (Builtin::ToLower, [Str(s)]) => {
            if s.is_empty() || s.chars().all(char::is_lowercase) {
                Str(s.clone())
            } else {
                let l = s.to_lowercase();
                if l.len() > max_string {
                    return Err(Fallback);
                }
                Str(l.into())
            }
        }
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
            Node::Switch(s) => self.switch(s)?,
            Node::InArray(x, items) => self.in_array(x, items)?,
            Node::Loop(l) => self.run_loop(l)?,
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
        Ok(builtin(b, vals.get(..args.len()).ok_or(Fallback)?, self.env, self.max_string)?)
    }

    #[inline(never)]
    fn user(&mut self, idx: usize, args: &[Node]) -> R {
        let func = self.lib.funcs.get(idx).and_then(|f| f.as_ref().ok()).ok_or(Fallback)?;
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
            ops: self.ops,
            max_ops: self.max_ops,
        };
        let r = match inner.block(&func.body) {
            Ok(v) => Ok(v),
            Err(Stop::Return) => inner.returned.take().ok_or(Stop::Fallback),
            Err(_) => Err(Stop::Fallback),
        };
        self.ops = inner.ops;
        r
    }

    #[inline(never)]
    fn interp(&mut self, parts: &[Node]) -> R {
        let mut s = String::new();
        for p in parts {
            let v = self.eval(p)?;
            // rhai shows `()` as nothing in an interpolated string.
            if v != V::Unit {
                display(&v, &mut s)?;
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
    fn switch(&mut self, s: &Switch) -> R {
        let v = self.eval(&s.subject)?;
        if matches!(v, V::Account) {
            return Err(Stop::Fallback);
        }
        let mut arm = None;
        let hash = switch_hash(&v.clone().into_dynamic());
        if let Ok(k) = s.cases.binary_search_by_key(&hash, |(h, _)| *h) {
            let blocks = s.cases.get(k).map(|c| c.1.as_slice()).unwrap_or_default();
            for &b in blocks {
                if self.arm_holds(s, b)? {
                    arm = Some(b);
                    break;
                }
            }
        }
        if arm.is_none() && !s.ranges.is_empty() {
            for &(a, b, inclusive, idx) in &s.ranges {
                let inside = match v {
                    V::Int(n) => n >= a && if inclusive { n <= b } else { n < b },
                    V::Float(x) => {
                        x >= a as f64 && if inclusive { x <= b as f64 } else { x < b as f64 }
                    }
                    _ => false,
                };
                if inside && self.arm_holds(s, idx)? {
                    arm = Some(idx);
                    break;
                }
            }
        }
        match arm.or(s.default) {
            None => Ok(V::Unit),
            Some(a) => self.eval(&s.arms.get(a).ok_or(Fallback)?.1),
        }
    }

    fn arm_holds(&mut self, s: &Switch, idx: usize) -> Result<bool, Stop> {
        match &s.arms.get(idx).ok_or(Fallback)?.0 {
            None => Ok(true),
            Some(c) => match self.eval(c)? {
                V::Bool(b) => Ok(b),
                _ => Err(Stop::Fallback),
            },
        }
    }

    #[inline(never)]
    fn in_array(&mut self, x: &Node, items: &[Node]) -> R {
        // rhai builds the array first, then evaluates the value.
        let mut vals = Vec::with_capacity(items.len());
        for i in items {
            vals.push(self.eval(i)?);
        }
        let x = self.eval(x)?;
        for item in vals {
            let same_type = std::mem::discriminant(&item) == std::mem::discriminant(&x);
            match binary(Bin::Eq, item, x.clone(), self.max_string) {
                Ok(V::Bool(true)) => return Ok(V::Bool(true)),
                Ok(V::Bool(false)) => {}
                // `==` undefined for two values of one type is rhai's error.
                _ if same_type => return Err(Stop::Fallback),
                _ => {}
            }
        }
        Ok(V::Bool(false))
    }

    /// One more pass of a loop: past the operation limit rhai would stop with an error, so
    /// rhai takes over before that.
    fn tick(&mut self, l: &Loop) -> Result<(), Stop> {
        self.ops = self.ops.saturating_add(l.pass_ops);
        if self.ops >= self.max_ops {
            return Err(Stop::Fallback);
        }
        Ok(())
    }

    fn set(&mut self, slot: usize, v: V) -> Result<(), Stop> {
        *self.locals.get_mut(slot).ok_or(Fallback)? = v;
        Ok(())
    }

    /// Runs the body once: `Ok(true)` to go on, `Ok(false)` after a `break`.
    fn pass(&mut self, body: &Block) -> Result<bool, Stop> {
        match self.block(body) {
            Ok(_) | Err(Stop::Continue) => Ok(true),
            Err(Stop::Break) => Ok(false),
            Err(e) => Err(e),
        }
    }

    #[inline(never)]
    fn run_loop(&mut self, l: &Loop) -> R {
        let broke = match &l.kind {
            LoopKind::Forever => loop {
                self.tick(l)?;
                if !self.pass(&l.body)? {
                    break true;
                }
            },
            LoopKind::While(c) => loop {
                self.tick(l)?;
                match self.eval(c)? {
                    V::Bool(true) => {}
                    V::Bool(false) => break false,
                    _ => return Err(Stop::Fallback),
                }
                if !self.pass(&l.body)? {
                    break true;
                }
            },
            LoopKind::Do(c, until) => loop {
                self.tick(l)?;
                if !self.pass(&l.body)? {
                    break true;
                }
                match self.eval(c)? {
                    V::Bool(b) if b == *until => break false,
                    V::Bool(_) => {}
                    _ => return Err(Stop::Fallback),
                }
            },
            LoopKind::Range { var, counter, from, to, inclusive } => {
                let (V::Int(a), V::Int(b)) = (self.eval(from)?, self.eval(to)?) else {
                    return Err(Stop::Fallback);
                };
                let mut broke = false;
                let mut n: i64 = 0;
                let mut i = a;
                while if *inclusive { i <= b } else { i < b } {
                    self.tick(l)?;
                    if let Some(c) = counter {
                        self.set(*c, V::Int(n))?;
                    }
                    self.set(*var, V::Int(i))?;
                    if !self.pass(&l.body)? {
                        broke = true;
                        break;
                    }
                    n += 1;
                    match i.checked_add(1) {
                        Some(x) => i = x,
                        None => break,
                    }
                }
                broke
            }
            LoopKind::Array { var, counter, items } => {
                let mut vals = Vec::with_capacity(items.len());
                for i in items {
                    vals.push(self.eval(i)?);
                }
                let mut broke = false;
                for (n, v) in vals.into_iter().enumerate() {
                    self.tick(l)?;
                    if let Some(c) = counter {
                        self.set(*c, V::Int(n as i64))?;
                    }
                    self.set(*var, v)?;
                    if !self.pass(&l.body)? {
                        broke = true;
                        break;
                    }
                }
                broke
            }
        };
        Ok(if broke { self.returned.take().unwrap_or(V::Unit) } else { V::Unit })
    }

    fn block(&mut self, b: &Block) -> R {
        let mut last = V::Unit;
        for s in &b.0 {
            last = match s {
                Stmt::Let(slot, e) => {
                    let v = self.eval(e)?;
                    self.set(*slot, v)?;
                    V::Unit
                }
                Stmt::Assign(slot, e) => {
                    let v = self.eval(e)?;
                    self.set(*slot, v)?;
                    V::Unit
                }
                Stmt::OpAssign(op, slot, e) => {
                    let v = self.eval(e)?;
                    let cur = self.locals.get(*slot).cloned().ok_or(Fallback)?;
                    let r = binary(*op, cur, v, self.max_string)?;
                    self.set(*slot, r)?;
                    V::Unit
                }
                Stmt::Expr(e) => self.eval(e)?,
                Stmt::Return(e) => {
                    self.returned = Some(self.eval(e)?);
                    return Err(Stop::Return);
                }
                Stmt::Break(e) => {
                    self.returned = match e {
                        Some(e) => Some(self.eval(e)?),
                        None => None,
                    };
                    return Err(Stop::Break);
                }
                Stmt::Continue => return Err(Stop::Continue),
            };
        }
        Ok(last)
    }
}

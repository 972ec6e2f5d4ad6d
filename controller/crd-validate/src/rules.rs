//! The CEL rules of `x-kubernetes-validations`, compiled once per catalog
//! and evaluated for real by the `cel` crate.
//!
//! The environment is CEL's standard library plus the parts of the
//! Kubernetes CEL libraries the loaded CRDs call: the strings extension
//! (`substring`, …, from the `cel` crate) and the URL library (`isURL`,
//! `url`, `getScheme`, `getHost`, `getPort`, `getEscapedPath`), hand-written
//! on [`crate::url`]. A rule calling anything else fails to load, so no rule
//! is ever skipped unnoticed.

use crate::url::{parse_reference, parse_request_uri, Url};
use cel::extractors::This;
use cel::{Context, Env, ExecutionError, Program, Value as CelValue};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// Functions a rule may call that the environment provides. Anything else
/// (an unknown function is only found when a rule runs) is refused at load.
const KUBERNETES_FUNCTIONS: &[&str] = &[
    "isURL",
    "url",
    "getScheme",
    "getHost",
    "getPort",
    "getEscapedPath",
];

pub(crate) struct Rules {
    env: Arc<Env>,
    programs: HashMap<String, Program>,
}

/// How a rule came out on one value.
pub(crate) enum Outcome {
    Holds,
    Fails,
    /// The rule could not be evaluated (the API server rejects those too).
    Error(String),
    /// A transition rule (`oldSelf`): not applicable at creation.
    NotApplicable,
}

impl Rules {
    pub(crate) fn new() -> Self {
        let mut env = Env::stdlib();
        // The strings extension is part of the Kubernetes CEL environment.
        let _ = env.add_extension(cel::extensions::strings);
        Self {
            env: Arc::new(env),
            programs: HashMap::new(),
        }
    }

    /// Compiles every rule under `schema`.
    pub(crate) fn compile_all(&mut self, schema: &Value) -> Result<(), String> {
        let mut rules = Vec::new();
        collect_rules(schema, &mut rules);
        for rule in rules {
            if self.programs.contains_key(&rule) {
                continue;
            }
            let program = self
                .env
                .compile(&rule)
                .map_err(|e| format!("CEL rule {rule:?} does not compile: {e}"))?;
            let references = program.references();
            for function in references.functions() {
                // Operators are calls too (`_+_`, `@in`, `!_`).
                let operator = !function.starts_with(|c: char| c.is_ascii_alphabetic());
                let known = operator
                    || STANDARD_FUNCTIONS.contains(&function)
                    || KUBERNETES_FUNCTIONS.contains(&function);
                if !known {
                    return Err(format!(
                        "CEL rule {rule:?} calls {function}(), which this validator does not provide"
                    ));
                }
            }
            self.programs.insert(rule, program);
        }
        Ok(())
    }

    /// A root context with the Kubernetes functions; `self` is bound per
    /// evaluation in a child scope.
    pub(crate) fn context(&self) -> Context<'static, 'static> {
        let mut context = Context::with_env(Arc::clone(&self.env));
        let _ = context.add_function("isURL", |s: Arc<String>| parse_request_uri(&s).is_ok());
        let _ = context.add_function("url", to_url);
        let _ = context.add_function("getScheme", |This(u): This<CelValue>| part(&u, "scheme"));
        let _ = context.add_function("getHost", |This(u): This<CelValue>| part(&u, "host"));
        let _ = context.add_function("getPort", |This(u): This<CelValue>| part(&u, "port"));
        let _ = context.add_function("getEscapedPath", |This(u): This<CelValue>| part(&u, "path"));
        context
    }

    /// Evaluates `rule` with `self` = `value`.
    pub(crate) fn evaluate(&self, context: &Context, rule: &str, value: &Value) -> Outcome {
        let Some(program) = self.programs.get(rule) else {
            return Outcome::Error(format!("rule {rule:?} was not compiled"));
        };
        if program.references().has_variable("oldSelf") {
            return Outcome::NotApplicable;
        }
        let this = match cel::to_value(value) {
            Ok(v) => v,
            Err(e) => return Outcome::Error(format!("the value has no CEL form: {e}")),
        };
        let mut scope = context.new_inner_scope();
        scope.add_variable_from_value("self", this);
        match program.execute(&scope) {
            Ok(CelValue::Bool(true)) => Outcome::Holds,
            Ok(CelValue::Bool(false)) => Outcome::Fails,
            Ok(other) => Outcome::Error(format!("the rule returned {other:?}, not a bool")),
            Err(e) => Outcome::Error(e.to_string()),
        }
    }
}

/// What CEL's standard library, its macros and the strings extension
/// provide (the functions of these the CRDs call are evaluated by the
/// `cel` crate).
const STANDARD_FUNCTIONS: &[&str] = &[
    "has",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "duration",
    "timestamp",
    "type",
    "dyn",
    "charAt",
    "indexOf",
    "lastIndexOf",
    "lowerAscii",
    "upperAscii",
    "replace",
    "split",
    "substring",
    "trim",
    "join",
];

/// `url(string)`: as Kubernetes does, a request URI first, then parsed
/// again as a reference so a fragment is not taken into the path.
fn to_url(s: Arc<String>) -> Result<CelValue, ExecutionError> {
    parse_request_uri(&s)
        .and_then(|_| parse_reference(&s))
        .map(url_value)
        .map_err(|e| {
            ExecutionError::function_error(
                "url",
                format!("URL parse error during conversion from string: {e}"),
            )
        })
}

fn url_value(url: Url) -> CelValue {
    let mut parts: HashMap<String, CelValue> = HashMap::new();
    parts.insert("scheme".into(), CelValue::String(Arc::new(url.scheme)));
    parts.insert("host".into(), CelValue::String(Arc::new(url.host)));
    parts.insert("port".into(), CelValue::String(Arc::new(url.port)));
    parts.insert("path".into(), CelValue::String(Arc::new(url.path)));
    parts.insert("opaque".into(), CelValue::String(Arc::new(url.opaque)));
    parts.insert("__url__".into(), CelValue::Bool(true));
    CelValue::from(parts)
}

fn part(url: &CelValue, name: &str) -> Result<CelValue, ExecutionError> {
    let CelValue::Map(map) = url else {
        return Err(ExecutionError::function_error(name, "not a URL"));
    };
    if map.get(&cel::objects::KeyRef::String("__url__")).is_none() {
        return Err(ExecutionError::function_error(name, "not a URL"));
    }
    map.get(&cel::objects::KeyRef::String(name))
        .cloned()
        .ok_or_else(|| ExecutionError::function_error(name, "not a URL"))
}

/// Every rule text under a schema node.
fn collect_rules(node: &Value, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                for rule in rules {
                    if let Some(text) = rule.get("rule").and_then(Value::as_str) {
                        out.push(text.to_string());
                    }
                }
            }
            for value in map.values() {
                collect_rules(value, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_rules(v, out)),
        _ => {}
    }
}

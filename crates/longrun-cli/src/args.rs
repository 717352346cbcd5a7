//! The arguments of `longrun submit`, written the way HTTPie writes a JSON body: `key=value`
//! makes a string member, `key:=json` a member with any JSON value, and `--args` gives a whole
//! object (inline, `@file`, or `@-` for stdin) that the items then add to or override.

use std::io::Read;

use serde_json::{Map, Value};

/// One `key=value` or `key:=json` item, parsed (and its JSON checked) while clap reads the
/// command line, so a bad item is a usage error like any other.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub key: String,
    pub value: Value,
}

/// clap's value parser for items.
pub fn parse_item(item: &str) -> Result<Item, String> {
    let Some(eq) = item.find('=') else {
        return Err(
            "expected key=value (a string) or key:=json (any JSON value), e.g. n:=3".to_owned(),
        );
    };
    // The first `=` ends the key; a `:` just before it makes the item raw JSON. So in
    // `a=b:=c` the key is `a` and the value is the string "b:=c".
    let (key, value) = match item[..eq].strip_suffix(':') {
        Some(key) => {
            let raw = &item[eq + 1..];
            let value = serde_json::from_str(raw).map_err(|e| {
                format!(
                    "the value after := is not JSON ({e}); for a string write {key}={raw} or {key}:='\"{raw}\"'"
                )
            })?;
            (key, value)
        }
        None => (&item[..eq], Value::String(item[eq + 1..].to_owned())),
    };
    if key.is_empty() {
        return Err("the key is empty; write key=value or key:=json".to_owned());
    }
    Ok(Item {
        key: key.to_owned(),
        value,
    })
}

/// Where `--args` comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Inline(String),
    File(String),
    Stdin,
}

impl Source {
    pub fn parse(arg: &str) -> Source {
        match arg.strip_prefix('@') {
            Some("-") => Source::Stdin,
            Some(path) => Source::File(path.to_owned()),
            None => Source::Inline(arg.to_owned()),
        }
    }

    fn read(&self) -> Result<String, String> {
        match self {
            Source::Inline(text) => Ok(text.clone()),
            Source::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("--args @{path}: cannot read the file: {e}")),
            Source::Stdin => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| format!("--args @-: cannot read stdin: {e}"))?;
                Ok(text)
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::Inline(_) => "--args".to_owned(),
            Source::File(path) => format!("--args @{path}"),
            Source::Stdin => "--args @- (stdin)".to_owned(),
        }
    }
}

/// The arguments object of a run: `--args` (if any), then each item. An item overrides a
/// member of `--args` with the same key; the same key given twice as items is an error.
pub fn build(args: Option<&Source>, items: &[Item]) -> Result<Value, String> {
    let mut object = match args {
        None => Map::new(),
        Some(source) => {
            let text = source.read()?;
            match serde_json::from_str(&text) {
                Ok(Value::Object(map)) => map,
                Ok(other) => {
                    return Err(format!(
                        "{}: the arguments must be a JSON object, not {}",
                        source.describe(),
                        kind(&other)
                    ));
                }
                Err(e) => return Err(format!("{}: not JSON: {e}", source.describe())),
            }
        }
    };
    let mut seen = std::collections::HashSet::new();
    for item in items {
        if !seen.insert(item.key.as_str()) {
            return Err(format!("{} is given twice; give each key once", item.key));
        }
        object.insert(item.key.clone(), item.value.clone());
    }
    Ok(Value::Object(object))
}

/// Any JSON value from `source` (the data of `longrun pub`).
pub fn read_json(source: &Source) -> Result<Value, String> {
    let text = source.read()?;
    serde_json::from_str(&text).map_err(|e| format!("the data is not JSON: {e}"))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(s: &str) -> Item {
        parse_item(s).unwrap()
    }

    #[test]
    fn items_are_strings_or_raw_json() {
        assert_eq!(item("name=Ada").value, json!("Ada"));
        assert_eq!(item("n=3").value, json!("3"));
        assert_eq!(item("n:=3").value, json!(3));
        assert_eq!(item("xs:=[1,2]").value, json!([1, 2]));
        assert_eq!(item("o:={\"a\":null}").value, json!({"a": null}));
        assert_eq!(item("s:=\"text\"").value, json!("text"));
        assert_eq!(item("empty=").value, json!(""));
        // Only the first `=` separates; the rest belongs to the value.
        let i = item("a=b:=c=d");
        assert_eq!((i.key.as_str(), i.value), ("a", json!("b:=c=d")));
        let i = item("url=http://h/?x=1");
        assert_eq!((i.key.as_str(), i.value), ("url", json!("http://h/?x=1")));
    }

    #[test]
    fn bad_items_say_how_to_write_them() {
        let e = parse_item("n:=abc").unwrap_err();
        assert!(e.contains("not JSON") && e.contains("n=abc"), "{e}");
        assert!(parse_item("n:=").unwrap_err().contains("not JSON"));
        assert!(parse_item("novalue").unwrap_err().contains("key=value"));
        assert!(parse_item("=x").unwrap_err().contains("key is empty"));
        assert!(parse_item(":=1").unwrap_err().contains("key is empty"));
    }

    #[test]
    fn items_override_args_and_may_not_repeat() {
        let args = Source::parse(r#"{"n": 1, "keep": true}"#);
        let built = build(Some(&args), &[item("n:=5"), item("s=x")]).unwrap();
        assert_eq!(built, json!({"n": 5, "keep": true, "s": "x"}));
        assert_eq!(build(None, &[]).unwrap(), json!({}));
        let e = build(None, &[item("n:=1"), item("n=2")]).unwrap_err();
        assert!(e.contains("n is given twice"), "{e}");
    }

    #[test]
    fn args_must_be_a_json_object() {
        let e = build(Some(&Source::parse("[1]")), &[]).unwrap_err();
        assert!(e.contains("must be a JSON object, not an array"), "{e}");
        let e = build(Some(&Source::parse("{")), &[]).unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
        let e = build(Some(&Source::parse("@/nonexistent/args.json")), &[]).unwrap_err();
        assert!(
            e.contains("--args @/nonexistent/args.json: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn args_sources() {
        assert_eq!(Source::parse("@-"), Source::Stdin);
        assert_eq!(Source::parse("@a.json"), Source::File("a.json".into()));
        assert_eq!(Source::parse("{}"), Source::Inline("{}".into()));
    }
}

//! `/openapi.json`: the OpenAPI 3 description of every route. The routes
//! themselves are written once in `openapi.json` beside this file; the
//! actions are added from the kinds of this build (built-in and a library
//! user's), each action as its own operation with its request and result
//! shapes, so a client generated from the document knows every action.

use serde_json::{Map, Value as Json, json};

use crate::config::KindTable;

/// The routes, as written.
const ROUTES: &str = include_str!("openapi.json");

/// The path of the generic action route, which stays for actions a client
/// does not know by name.
pub const ACTION_ROUTE: &str = "/v1/services/{name}/actions/{action}";

/// The path of one action's own operation.
pub fn action_path(action: &str) -> String {
    format!("/v1/services/{{name}}/actions/{action}")
}

/// The document for a build with `kinds`.
pub fn document(kinds: &KindTable) -> Json {
    let mut doc: Json = serde_json::from_str(ROUTES)
        .unwrap_or_else(|e| unreachable!("src/api/openapi.json is JSON (a test parses it): {e}"));
    // Every action name, with the kinds that have it (two kinds may share
    // a name, each with its own shapes).
    let mut actions: Vec<(&str, Vec<(&str, &crate::config::Action)>)> = Vec::new();
    for kind in kinds.writable() {
        for a in kind.actions() {
            match actions.iter_mut().find(|(n, _)| *n == a.name) {
                Some((_, v)) => v.push((kind.name(), a)),
                None => actions.push((a.name, vec![(kind.name(), a)])),
            }
        }
    }

    let mut table = String::from("| kind | actions |\n|---|---|\n");
    for kind in kinds.writable() {
        let names = kind.action_names();
        let list = if names.is_empty() {
            "none".to_string()
        } else {
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        table.push_str(&format!("| `{}` | {list} |\n", kind.name()));
    }
    let generic = &mut doc["paths"][ACTION_ROUTE]["post"];
    if let Some(d) = generic["description"].as_str() {
        generic["description"] = Json::String(format!(
            "{d}\n\nThe kinds of this build and their actions (each action also has an operation of its own):\n\n{table}"
        ));
    }
    let template = generic.clone();

    let mut paths = Map::new();
    for (name, by_kind) in &actions {
        let mut op = template.clone();
        let kinds_list = by_kind
            .iter()
            .map(|(k, _)| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let summaries = by_kind
            .iter()
            .map(|(k, a)| format!("- `{k}`: {}", a.summary))
            .collect::<Vec<_>>()
            .join("\n");
        op["operationId"] = json!(format!("action_{}", name.replace('-', "_")));
        op["summary"] = json!(format!("Action {name} (kinds {kinds_list})"));
        op["description"] = json!(format!(
            "{summaries}\n\nA service of another kind answers 404. Needs the bearer token when one is set."
        ));
        // Kinds sharing an action may share its shapes: each distinct one
        // once (`oneOf` of two equal schemas would match nothing).
        let one_or_many = |all: Vec<Json>| -> Json {
            let mut schemas: Vec<Json> = Vec::new();
            for s in all {
                if !schemas.contains(&s) {
                    schemas.push(s);
                }
            }
            if schemas.len() == 1 {
                schemas.into_iter().next().unwrap_or_default()
            } else {
                json!({"oneOf": schemas})
            }
        };
        let request = one_or_many(by_kind.iter().map(|(_, a)| a.request.clone()).collect());
        let response = one_or_many(by_kind.iter().map(|(_, a)| a.response.clone()).collect());
        if let Some(params) = op["parameters"].as_array_mut() {
            params.retain(|p| p["name"] != "action");
        }
        op["requestBody"]["content"]["application/json"]["schema"] = request;
        op["responses"]["200"]["content"]["application/json"]["schema"] = json!({
            "type": "object",
            "required": ["service", "action", "result"],
            "additionalProperties": false,
            "properties": {
                "service": {"type": "string"},
                "action": {"type": "string", "enum": [name]},
                "result": response,
            },
        });
        paths.insert(action_path(name), json!({ "post": op }));
    }
    if let Some(p) = doc["paths"].as_object_mut() {
        p.extend(paths);
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Action, KindDef, NoSettings, Runs};

    #[test]
    fn each_action_gets_its_operation_with_its_shapes() {
        let mut kinds = KindTable::new();
        kinds.add(
            KindDef::new::<NoSettings>("a", Runs::InProcess).action(
                Action::new("go", "Goes.")
                    .request(json!({"type": "object", "properties": {"n": {"type": "integer"}}}))
                    .response(json!({"type": "integer"})),
            ),
        );
        kinds.add(
            KindDef::new::<NoSettings>("b", Runs::InProcess)
                .action(Action::new("go", "Also goes.")),
        );
        // A third kind with the same shapes as b: listed once.
        kinds.add(
            KindDef::new::<NoSettings>("b2", Runs::InProcess)
                .action(Action::new("go", "Goes too.")),
        );
        kinds.add(KindDef::new::<NoSettings>("c", Runs::Process));
        let doc = document(&kinds);
        let op = &doc["paths"]["/v1/services/{name}/actions/go"]["post"];
        assert_eq!(op["operationId"], "action_go");
        let req = &op["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(req["oneOf"][0]["properties"]["n"]["type"], "integer");
        assert_eq!(req["oneOf"][1]["type"], "object");
        assert_eq!(req["oneOf"].as_array().map(Vec::len), Some(2), "{req}");
        let result = &op["responses"]["200"]["content"]["application/json"]["schema"];
        assert_eq!(
            result["properties"]["result"]["oneOf"][0]["type"],
            "integer"
        );
        assert!(
            op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["name"] != "action")
        );
        let generic = doc["paths"][ACTION_ROUTE]["post"]["description"]
            .as_str()
            .unwrap();
        assert!(generic.contains("| `a` | `go` |"), "{generic}");
        assert!(generic.contains("| `c` | none |"), "{generic}");
    }
}

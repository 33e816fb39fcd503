//! The OpenAPI 3.1 document, generated from `ROUTES` so it cannot drift from the router.

use serde_json::{json, Map, Value};

use crate::ROUTES;

fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect()
}

fn query_params(operation_id: &str) -> Vec<Value> {
    let names: &[&str] = match operation_id {
        "services.list" | "credentials.list" | "audit.list" => &["limit", "pageToken"],
        "sandboxes.list" => &["labelKey", "labelValue", "state", "limit", "pageToken"],
        "sessions.list" => &["state", "limit", "pageToken"],
        "services.delete" => &["ifMatchGeneration", "force"],
        "sandboxes.logs" => &["follow"],
        "services.start" | "services.stop" | "services.restart" => &["waitUntil", "timeoutMs"],
        _ => &[],
    };
    names
        .iter()
        .map(|n| json!({ "name": n, "in": "query", "required": false, "schema": { "type": "string" } }))
        .collect()
}

pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let mut params = path_params(route.path);
        params.extend(query_params(route.operation_id));
        let mut op = json!({
            "operationId": route.operation_id,
            "summary": route.summary,
            "parameters": params,
            "responses": {
                route.success.to_string(): { "description": "success", "content": { "application/json": { "schema": { "type": "object" } } } },
                "default": { "description": "error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }
            }
        });
        if matches!(route.method, "POST" | "PUT")
            && !route.path.ends_with("/start")
            && !route.path.ends_with("/stop")
            && !route.path.ends_with("/restart")
        {
            op["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": { "type": "object" } } } });
        }
        if route.authenticated {
            op["security"] = json!([{ "bearer": [] }, { "apiKey": [] }]);
        }
        let entry = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        entry[route.method.to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Nimbus API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer" },
                "apiKey": { "type": "apiKey", "in": "header", "name": "X-Nimbus-Api-Key" }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": { "error": {
                        "type": "object",
                        "required": ["code", "message", "details"],
                        "properties": {
                            "code": { "type": "string", "enum": nimbus_core::ErrorCode::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>() },
                            "message": { "type": "string" },
                            "details": { "type": "object" }
                        }
                    } }
                }
            }
        }
    })
}

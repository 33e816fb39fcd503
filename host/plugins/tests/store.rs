//! The plugin store: bundled plugins, install checks, pins, the precompile cache, inspect, and
//! configuration errors that name their key.

mod common;

use common::{config, guest, TempDir};
use nimbus_plugins::{PluginHost, PluginStore, AUTHZ_WORLD, HEALTH_WORLD};

#[test]
fn a_fresh_store_lists_the_bundled_plugins_as_active() {
    let dir = TempDir::new("fresh");
    let store = PluginStore::open(dir.path()).unwrap();
    let list = store.list().unwrap();
    let got: Vec<(&str, &str, &str, bool)> = list
        .iter()
        .map(|p| {
            (
                p.id.as_str(),
                p.version.as_str(),
                p.world.as_str(),
                p.active,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("grants-policy", "0.1.5", AUTHZ_WORLD, true),
            ("http-health", "0.1.1", HEALTH_WORLD, true),
            ("tcp-health", "0.1.1", HEALTH_WORLD, true),
        ]
    );
    assert!(list
        .iter()
        .all(|p| p.sha256.len() == 64 && p.source == "bundled"));
}

#[test]
fn install_refuses_bytes_that_are_not_a_component() {
    let dir = TempDir::new("notcomp");
    let store = PluginStore::open(dir.path()).unwrap();
    let core_module = wat::parse_str("(module (func (export \"f\")))").unwrap();
    let err = store
        .install(&core_module, Some("thing"), Some("0.1.0"))
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("not a WebAssembly component"),
        "{err:#}"
    );
    let err = store
        .install(b"hello", Some("thing"), Some("0.1.0"))
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("not a WebAssembly component"),
        "{err:#}"
    );
}

#[test]
fn install_refuses_a_component_of_an_unknown_or_incompatible_world() {
    let dir = TempDir::new("world");
    let store = PluginStore::open(dir.path()).unwrap();
    let component = |export: &str| {
        wat::parse_str(format!(
            r#"(component
                (core module $m (func (export "f")))
                (core instance $i (instantiate $m))
                (func $f (canon lift (core func $i "f")))
                (instance $inst (export "decide" (func $f)))
                (export "{export}" (instance $inst)))"#
        ))
        .unwrap()
    };
    let err = store
        .install(
            &component("nimbus:authz/policy@0.2.0"),
            Some("future"),
            Some("1.0.0"),
        )
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("supports nimbus:authz/authz-policy@0.1.0"),
        "{err:#}"
    );
    let err = store
        .install(
            &component("acme:thing/api@1.0.0"),
            Some("acme"),
            Some("1.0.0"),
        )
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("implements no Nimbus plugin world"),
        "{err:#}"
    );
    // Right name, wrong shape: `decide` with no parameters.
    let err = store
        .install(
            &component("nimbus:authz/policy@0.1.0"),
            Some("shape"),
            Some("1.0.0"),
        )
        .unwrap_err();
    assert!(format!("{err:#}").contains("does not match"), "{err:#}");
}

#[test]
fn an_installed_version_is_never_replaced_by_other_bytes() {
    let dir = TempDir::new("immutable");
    let store = PluginStore::open(dir.path()).unwrap();
    let err = store
        .install(
            &guest("deny_all_policy"),
            Some("grants-policy"),
            Some("0.1.5"),
        )
        .unwrap_err();
    assert!(err.to_string().contains("never replaced"), "{err:#}");
    // The same bytes again are accepted (idempotent).
    store
        .install(&guest("deny_all_policy"), None, None)
        .unwrap();
    store
        .install(&guest("deny_all_policy"), None, None)
        .unwrap();
}

#[test]
fn verify_and_load_catch_a_component_changed_on_disk() {
    let dir = TempDir::new("tamper");
    let store = PluginStore::open(dir.path()).unwrap();
    assert!(store.verify().unwrap().iter().all(|r| r.ok()));
    let file = store
        .root()
        .join("installed/grants-policy/0.1.5/component.wasm");
    std::fs::write(&file, guest("deny_all_policy")).unwrap();
    let reports = store.verify().unwrap();
    let bad: Vec<_> = reports.iter().filter(|r| !r.ok()).collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].id, "grants-policy");
    let err = PluginHost::open(dir.path(), &config("")).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.starts_with("plugins.authz"), "{msg}");
    assert!(msg.contains("fails its pin"), "{msg}");
}

#[test]
fn a_corrupt_precompiled_file_is_recompiled_not_trusted() {
    let dir = TempDir::new("cache");
    let store = PluginStore::open(dir.path()).unwrap();
    let cache = store.root().join("cache");
    let engines: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(
        engines.len(),
        1,
        "one directory per engine compatibility key"
    );
    let engine_dir = engines.into_iter().next().unwrap().unwrap().path();
    let sha = &store.resolve("grants-policy").unwrap()[0].sha256;
    let cwasm = engine_dir.join(format!("{sha}.cwasm"));
    assert!(cwasm.exists(), "install precompiles into the cache");
    let mut bytes = std::fs::read(&cwasm).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&cwasm, &bytes).unwrap();
    let host = PluginHost::open(dir.path(), &config("")).unwrap();
    let d = host.authorizer().authorize(&common::request(
        &["tenant:admin"],
        "services.list",
        nimbus_core::authz::ResourceKind::Service,
        None,
    ));
    assert!(d.allow, "{d:?}");
    // Rewritten intact.
    assert_ne!(std::fs::read(&cwasm).unwrap(), bytes);
    // `precompile` rebuilds the cache for every installed plugin.
    assert_eq!(store.precompile().unwrap().len(), 3);
}

#[test]
fn inspect_prints_the_world_the_component_implements() {
    let dir = TempDir::new("inspect");
    let store = PluginStore::open(dir.path()).unwrap();
    let (info, wit) = store.inspect("grants-policy").unwrap();
    assert_eq!(info.version, "0.1.5");
    assert!(wit.contains("export nimbus:authz/policy@0.1.0;"), "{wit}");
    assert!(
        wit.contains("decide: func(request: request) -> result<decision, error>"),
        "{wit}"
    );
    let (_, wit) = store.inspect("http-health@0.1.1").unwrap();
    assert!(wit.contains("import nimbus:host/http@0.1.0;"), "{wit}");
    assert!(!wit.contains("wasi:"), "no WASI imports: {wit}");
}

#[test]
fn removing_a_bundled_plugin_is_refused_and_other_plugins_go() {
    let dir = TempDir::new("remove");
    let store = PluginStore::open(dir.path()).unwrap();
    let err = store.remove("grants-policy").unwrap_err();
    assert!(err.to_string().contains("bundled"), "{err}");
    store
        .install(&guest("deny_all_policy"), None, None)
        .unwrap();
    let removed = store.remove("deny-all-policy").unwrap();
    assert_eq!(removed.len(), 1);
    assert!(store.resolve("deny-all-policy").is_err());
}

#[test]
fn configuration_naming_a_missing_plugin_or_a_wrong_world_fails_with_the_key() {
    let dir = TempDir::new("badcfg");
    let err = PluginHost::open(dir.path(), &config("[authz]\nplugin = \"nope\"\n")).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.starts_with("plugins.authz.plugin = \"nope\""), "{msg}");
    assert!(
        msg.contains("grants-policy"),
        "lists what is installed: {msg}"
    );

    let err = PluginHost::open(
        dir.path(),
        &config("[authz]\nplugin = \"grants-policy\"\nversion = \"9.9.9\"\n"),
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.starts_with("plugins.authz.version = \"9.9.9\"")
            && msg.contains("installed versions: 0.1.5"),
        "{msg}"
    );

    let err =
        PluginHost::open(dir.path(), &config("[authz]\nplugin = \"http-health\"\n")).unwrap_err();
    assert!(
        format!("{err:#}").contains("this slot needs nimbus:authz/authz-policy@0.1.0"),
        "{err:#}"
    );

    let err = PluginHost::open(
        dir.path(),
        &config("[authz]\nplugin = \"grants-policy\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n"),
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").starts_with("plugins.authz.sha256"),
        "{err:#}"
    );

    let err = PluginHost::open(
        dir.path(),
        &config("[providers.loadBalancer]\nplugin = \"lb\"\n"),
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").starts_with("plugins.providers.loadBalancer"),
        "{err:#}"
    );
}

#[test]
fn the_documented_example_configuration_parses_and_opens() {
    let docs = include_str!("../../../docs/plugins.md");
    let start = docs
        .find("```toml\n[plugins]")
        .expect("docs/plugins.md has a [plugins] example");
    let text = &docs[start + 8..];
    let text = &text[..text.find("```").unwrap()];
    #[derive(serde::Deserialize)]
    struct File {
        plugins: nimbus_plugins::PluginsConfig,
    }
    let file: File = toml::from_str(text).unwrap();
    file.plugins.validate().unwrap();
    let dir = TempDir::new("docs");
    PluginHost::open(dir.path(), &file.plugins).unwrap();
}

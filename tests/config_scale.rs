//! Not a check: the bench harness of `benches/config-scale.sh` for a gateway fed by the API
//! server. It loads a folder of specs (`benches/gen-specs.py`) into the fake API server of the
//! end-to-end tests (`support::apiserver`): every InboundTrunk, OutboundTrunk and
//! TransferDestination as an object, and every basic-auth Secret into the credentials bundle
//! (`trunkline/trunkline-credentials`, as the operator writes it, with a nonce key); writes a
//! kubeconfig and the server's URL into `CONFIG_SCALE_DIR`, and serves until a file `stop`
//! appears there (at most 30 minutes). Ignored, and a no-op without `CONFIG_SCALE_SPECS`.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use support::apiserver::ApiServer;
use trunkline::config::secret::SecretEntry;

const NAMESPACE: &str = "trunkline";
const BUNDLE: &str = "trunkline-credentials";

#[test]
#[ignore = "a bench harness: benches/config-scale.sh runs it"]
fn serve_a_spec_folder_from_the_fake_api_server() {
    let (Ok(specs), Ok(dir)) =
        (std::env::var("CONFIG_SCALE_SPECS"), std::env::var("CONFIG_SCALE_DIR"))
    else {
        return;
    };
    let dir = PathBuf::from(dir);
    let loaded = trunkline::source::load_paths(&[PathBuf::from(specs)]);
    assert!(loaded.problems.is_empty() && loaded.refused.is_empty(), "the specs load clean");
    let api = ApiServer::start();
    let put = |resource: &str, mut object: Value| {
        if let Some(o) = object.as_object_mut() {
            o.remove("status");
        }
        api.put(resource, object);
    };
    for o in &loaded.specs.inbound {
        put("trunkline.dev/v1alpha1/inboundtrunks", serde_json::to_value(o).unwrap());
    }
    for o in &loaded.specs.outbound {
        put("trunkline.dev/v1alpha1/outboundtrunks", serde_json::to_value(o).unwrap());
    }
    for o in &loaded.specs.transfers {
        put("trunkline.dev/v1alpha1/transferdestinations", serde_json::to_value(o).unwrap());
    }
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut data = serde_json::Map::new();
    data.insert("nonce-key".into(), json!(b64(&[7; 32])));
    for (namespace, name) in loaded.secret_origins.keys() {
        if let Some(SecretEntry::BasicAuth(auth)) = loaded.specs.secrets.get(namespace, name) {
            let entry = json!({"username": auth.username, "password": auth.password.expose()});
            data.insert(format!("{namespace}.{name}"), json!(b64(entry.to_string().as_bytes())));
        }
    }
    api.put(
        "v1/secrets",
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": BUNDLE, "namespace": NAMESPACE}, "data": data,
        }),
    );
    api.write_kubeconfig(&dir.join("kubeconfig"), NAMESPACE);
    std::fs::write(dir.join("api-url"), format!("http://{}", api.addr())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(1800);
    while !dir.join("stop").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}

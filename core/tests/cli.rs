//! The `realtime` binary's operator and plugin-author commands, run as a user would run them:
//! `checktoken`, `checkconfig` with plugins, `plugin run`.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn realtime(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_realtime"))
        .args(args)
        // The shipped defaults only: no ./config/default.toml layer from the working directory.
        .current_dir(std::env::temp_dir())
        .env_remove("REALTIME_CONFIG")
        .output()
        .expect("the realtime binary runs")
}

fn json_out(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "stdout is not JSON ({error}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// A `match.update` with fair scores: `match-score-guard` names the leader.
const SCORES_EVENT: &str = r#"{"name":"match.update","room":"competition:1","payload":{"players":["ana","ben"],"scores":{"ana":3,"ben":1}}}"#;

fn scratch_file(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "realtime-cli-{:016x}-{name}",
        rand::random::<u64>()
    ));
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn checktoken_says_valid_with_the_user_and_claims() {
    let minted = realtime(&["gentoken", "--sub", "alice", "--rooms", "competition:*"]);
    assert!(minted.status.success());
    let token = String::from_utf8(minted.stdout).unwrap();
    let checked = realtime(&["checktoken", token.trim()]);
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let report = json_out(&checked);
    assert_eq!(report["verdict"]["valid"], true);
    assert_eq!(report["verdict"]["user"], "alice");
    assert_eq!(
        report["claims"]["rooms"],
        serde_json::json!(["competition:*"])
    );
    assert_eq!(report["header"]["alg"], "HS256");
}

#[test]
fn checktoken_says_why_a_token_is_refused_and_fails() {
    let minted = realtime(&["gentoken", "--sub", "bob"]);
    let token = String::from_utf8(minted.stdout).unwrap();
    // Tamper with the signature's last characters.
    let mut tampered = token.trim().to_owned();
    let cut = tampered.len() - 4;
    tampered.replace_range(cut.., "AAAA");
    let checked = realtime(&["checktoken", &tampered]);
    assert!(!checked.status.success());
    let report = json_out(&checked);
    assert_eq!(report["verdict"]["valid"], false);
    assert!(
        report["verdict"]["why"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{report}"
    );
    assert_eq!(
        report["claims"]["sub"], "bob",
        "the claims are shown even when refused"
    );
}

#[test]
fn checkconfig_loads_every_plugin_and_names_a_broken_one() {
    let broken = scratch_file("broken.wasm", "not wasm at all");
    let config = scratch_file(
        "config.toml",
        &format!(
            "[plugins.scorer]\npath = \"{}\"\n[room_types.competition]\ncapacity = 10\nclient_publish = false\npresence = true\njoin = \"claims\"\nplugins = [\"scorer\"]\n",
            broken.display()
        ),
    );
    let checked = realtime(&["--config", config.to_str().unwrap(), "checkconfig"]);
    assert!(
        !checked.status.success(),
        "a broken plugin must fail checkconfig"
    );
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert!(stderr.contains("plugins.scorer"), "{stderr}");
}

/// Where `bash tests/run` puts the plugin builds (`REALTIME_PLUGIN_DIR` overrides).
fn plugin_wasm(crate_name: &str) -> PathBuf {
    let directory = std::env::var_os("REALTIME_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/wasm32-unknown-unknown/plugin")
        });
    let path = directory.join(format!("{}.wasm", crate_name.replace('-', "_")));
    assert!(
        path.is_file(),
        "{} is missing: build the plugins first (bash tests/run does)",
        path.display()
    );
    path
}

#[test]
fn plugin_run_shows_what_a_plugin_does_to_one_event() {
    let wasm = plugin_wasm("match-score-guard");
    let good = scratch_file("good.json", SCORES_EVENT);
    let ran = realtime(&[
        "plugin",
        "run",
        "--wasm",
        wasm.to_str().unwrap(),
        "--plugin-config",
        r#"{"max_score":100}"#,
        "--event",
        good.to_str().unwrap(),
    ]);
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let report = json_out(&ran);
    assert_eq!(report["outcome"], "replace", "{report}");
    assert_eq!(report["payload"]["leader"], "ana");
    assert!(report["micros"].as_u64().is_some());

    let bad = scratch_file(
        "bad.json",
        r#"{"name":"match.update","room":"competition:1","payload":{"players":["ana","ben"],"scores":{"ana":-3,"ben":1}}}"#,
    );
    let ran = realtime(&[
        "plugin",
        "run",
        "--wasm",
        wasm.to_str().unwrap(),
        "--event",
        bad.to_str().unwrap(),
    ]);
    let report = json_out(&ran);
    assert_eq!(report["outcome"], "drop", "{report}");
    assert!(report["reason"].as_str().unwrap().contains("ana"));
}

/// Plugin memories reserve 4 GiB of address space each (so compiled plugins need no bounds
/// checks); where the address space is limited, the runtime falls back to reservations the size
/// of the memory cap, and plugins still run.
#[test]
fn plugins_run_where_the_address_space_is_limited() {
    let wasm = plugin_wasm("match-score-guard");
    let event = scratch_file("limited.json", SCORES_EVENT);
    // 64 GiB: far below the ~2 TiB of whole reservations, far above the capped ones.
    let ran = Command::new("bash")
        .args([
            "-c",
            r#"ulimit -v 67108864 && exec "$0" "$@""#,
            env!("CARGO_BIN_EXE_realtime"),
            "plugin",
            "run",
            "--wasm",
            wasm.to_str().unwrap(),
            "--event",
            event.to_str().unwrap(),
        ])
        .current_dir(std::env::temp_dir())
        .env_remove("REALTIME_CONFIG")
        .output()
        .expect("bash runs");
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(ran.status.success(), "{stderr}");
    assert!(
        stderr.contains("reserved at their cap only"),
        "the fallback was not taken: {stderr}"
    );
    assert_eq!(json_out(&ran)["outcome"], "replace");
}

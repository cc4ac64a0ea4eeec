//! The example Python client (`libclient/examples/python/`) against a real virtproxyd: stubs
//! generated from `proto/` by its `gen.sh`, a Unix-socket channel with `grpc.default_authority`
//! set, `test:///default` in the `rvirt-uri` metadata. Skipped, with the reason printed, where
//! no Python has grpcio and grpc_tools (`scripts/install-deps.sh` installs them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rvirt_e2e::{DaemonProcess, TestRoot};

const PROXY: &str = "virtproxyd";

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../libclient/examples/python")
}

/// The first Python that imports grpc and grpc_tools: `$PYTHON`, `python3` on PATH, or the
/// system's `/usr/bin/python3` (Debian's packages install there, while PATH may lead to another
/// Python first).
fn python() -> Result<String, String> {
    let mut candidates: Vec<String> = std::env::var("PYTHON").into_iter().collect();
    candidates.extend(["python3".to_owned(), "/usr/bin/python3".to_owned()]);
    let mut tried = Vec::new();
    for candidate in candidates {
        let imports = Command::new(&candidate)
            .args(["-c", "import grpc, grpc_tools"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match imports {
            Ok(status) if status.success() => return Ok(candidate),
            Ok(_) => tried.push(format!("{candidate}: cannot import grpc, grpc_tools")),
            Err(e) => tried.push(format!("{candidate}: {e}")),
        }
    }
    Err(tried.join("; "))
}

/// Generated stubs in a temporary directory, or why the tools are missing.
fn generate(python: &str) -> Result<tempfile::TempDir, String> {
    let out = tempfile::tempdir().expect("stub directory");
    let generated = Command::new("sh")
        .arg(examples().join("gen.sh"))
        .arg(out.path())
        .env("PYTHON", python)
        .output()
        .expect("run gen.sh");
    match generated.status.code() {
        Some(0) => Ok(out),
        Some(3) => Err(String::from_utf8_lossy(&generated.stderr).trim().to_owned()),
        _ => panic!("gen.sh failed: {}", String::from_utf8_lossy(&generated.stderr)),
    }
}

/// Python, generated stubs, or `None` after printing why the test is skipped.
fn prepare(test: &str) -> Option<(String, tempfile::TempDir)> {
    let prepared = python().and_then(|python| generate(&python).map(|stubs| (python, stubs)));
    match prepared {
        Ok(prepared) => Some(prepared),
        Err(reason) => {
            println!("skipping {test}: {reason}");
            None
        }
    }
}

/// Runs example `script` against the proxy of `root` in a thread (the daemon's tasks keep
/// running), failing the test if it does not finish within the harness deadline.
async fn run_example(python: &str, stubs: &Path, root: &TestRoot, script: &str) -> Output {
    let mut command = Command::new(python);
    command
        .arg(examples().join(script))
        .env("PYTHONPATH", stubs)
        .env("RVIRT_ROOT", root.path())
        .env("RVIRT_URI", "test:///default")
        .stdin(Stdio::null());
    let run = tokio::task::spawn_blocking(move || command.output().expect("run the example"));
    tokio::time::timeout(rvirt_e2e::DAEMON_DEADLINE, run)
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish"))
        .expect("the example's thread")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn python_client_lists_the_test_domain_through_the_proxy() {
    let Some((python, stubs)) = prepare("python_client_lists_the_test_domain_through_the_proxy") else {
        return;
    };
    let root = TestRoot::new();
    let _proxy = DaemonProcess::start(PROXY, &root).await;
    let output = run_example(&python, stubs.path(), &root, "list_domains.py").await;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "list_domains.py failed: {stderr}");
    let row = stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("test"))
        .unwrap_or_else(|| panic!("no row for domain test in:\n{stdout}"));
    assert!(row.contains("DOMAIN_STATE_RUNNING"), "{row}");
}

#[tokio::test]
async fn python_client_receives_the_started_event_of_the_domain_it_starts() {
    let Some((python, stubs)) = prepare("python_client_receives_the_started_event_of_the_domain_it_starts")
    else {
        return;
    };
    let root = TestRoot::new();
    let _proxy = DaemonProcess::start(PROXY, &root).await;
    let output = run_example(&python, stubs.path(), &root, "watch_events.py").await;
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "watch_events.py failed: {stderr}\n{stdout}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"started test"), "{stdout}");
    let event = lines.get(1).unwrap_or_else(|| panic!("no event in:\n{stdout}"));
    assert!(
        event.starts_with("event ") && event.ends_with("test: lifecycle DOMAIN_EVENT_TYPE_STARTED"),
        "{event}"
    );
}

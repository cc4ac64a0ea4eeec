//! End to end: `rvirsh secret-*` through virtproxyd (`?mode=legacy`, the proxy's socket) to
//! virtsecretd, including an interactive `secret-set-value` on a real terminal whose value is
//! never echoed.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use base64::Engine as _;
use rvirt_e2e::{DaemonProcess, TestRoot};

const URI: &str = "qemu:///system?mode=legacy";
const UUID: &str = "6dd3e4a5-1d76-44ce-961f-f119f5aad935";

fn rvirsh(root: &TestRoot, args: &[&str]) -> Output {
    Command::new(rvirt_e2e::binary("rvirsh"))
        .env("RVIRT_ROOT", root.path())
        .args(["-c", URI])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("rvirsh runs")
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "rvirsh failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs rvirsh on a pseudo-terminal (util-linux `script`); once the terminal shows `prompt`,
/// types `input`. Returns everything the terminal showed.
async fn rvirsh_on_a_terminal(root: &TestRoot, args: &str, prompt: &str, input: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let command = format!("{} -c '{URI}' {args}", rvirt_e2e::binary("rvirsh").display());
    let mut child = tokio::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("RVIRT_ROOT", root.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("script runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut screen = rvirt_e2e::guest::SerialReader::new(child.stdout.take().expect("stdout"));
    let mut shown = screen
        .expect(prompt.as_bytes(), std::time::Duration::from_secs(30))
        .await
        .expect("the prompt");
    stdin.write_all(input.as_bytes()).await.expect("type the value");
    let mut rest = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        screen.get_mut().read_to_end(&mut rest),
    )
    .await
    .expect("rvirsh finishes in time")
    .expect("read the terminal");
    shown.extend_from_slice(&rest);
    let status = child.wait().await.expect("script exits");
    assert!(status.success(), "{status:?}");
    String::from_utf8_lossy(&shown).into_owned()
}

fn have_script() -> bool {
    Path::new("/usr/bin/script").exists()
}

#[tokio::test]
async fn rvirsh_secret_commands_work_through_the_proxy() {
    let root = TestRoot::new();
    let _secrets = DaemonProcess::start("virtsecretd", &root).await;

    // Without virtproxyd the legacy URI has nowhere to go: the calls below do go through it.
    let refused = rvirsh(&root, &["secret-list"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("rvirt-sock"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let _proxy = DaemonProcess::start("virtproxyd", &root).await;

    let xml = root.path().join("secret.xml");
    std::fs::write(
        &xml,
        format!(
            "<secret ephemeral='no' private='yes'><uuid>{UUID}</uuid>\
             <description>disk passphrase</description>\
             <usage type='volume'><volume>/var/lib/images/a.qcow2</volume></usage></secret>"
        ),
    )
    .expect("xml file");
    let defined = ok(&rvirsh(&root, &["secret-define", &xml.to_string_lossy()]));
    assert_eq!(defined.trim(), format!("Secret {UUID} created"));

    let list = ok(&rvirsh(&root, &["secret-list"]));
    assert!(
        list.contains(UUID) && list.contains("volume /var/lib/images/a.qcow2"),
        "{list}"
    );
    let dumped = ok(&rvirsh(&root, &["secret-dumpxml", UUID]));
    assert!(
        dumped.contains("<description>disk passphrase</description>"),
        "{dumped}"
    );

    let value_file = root.path().join("value");
    std::fs::write(&value_file, "from-a-file").expect("value file");
    ok(&rvirsh(
        &root,
        &[
            "secret-set-value",
            UUID,
            "--file",
            &value_file.to_string_lossy(),
            "--plain",
        ],
    ));
    // A private secret's value is never returned, through the proxy as directly.
    let private = rvirsh(&root, &["secret-get-value", UUID]);
    assert!(!private.status.success(), "{private:?}");

    // A private secret stays private; a public one, set interactively on a terminal, is read
    // back.
    ok(&rvirsh(&root, &["secret-undefine", UUID]));
    std::fs::write(
        &xml,
        format!(
            "<secret ephemeral='no' private='no'><uuid>{UUID}</uuid>\
             <usage type='volume'><volume>/var/lib/images/a.qcow2</volume></usage></secret>"
        ),
    )
    .expect("xml file");
    ok(&rvirsh(&root, &["secret-define", &xml.to_string_lossy()]));
    if have_script() {
        let screen = rvirsh_on_a_terminal(
            &root,
            &format!("secret-set-value {UUID} --interactive"),
            "Enter new value for secret:",
            "typed-on-a-tty\n",
        )
        .await;
        assert!(screen.contains("Enter new value for secret:"), "{screen}");
        assert!(
            !screen.contains("typed-on-a-tty"),
            "the value is not echoed: {screen}"
        );
        let value = ok(&rvirsh(&root, &["secret-get-value", UUID]));
        assert_eq!(
            value.trim(),
            base64::engine::general_purpose::STANDARD.encode("typed-on-a-tty")
        );
    } else {
        eprintln!("interactive part skipped: util-linux `script` is not installed");
    }
    let plain = ok(&rvirsh(
        &root,
        &[
            "secret-set-value",
            UUID,
            "--file",
            &value_file.to_string_lossy(),
            "--plain",
        ],
    ));
    assert!(plain.contains("Secret value set"), "{plain}");
    let value = ok(&rvirsh(&root, &["secret-get-value", UUID, "--plain"]));
    assert_eq!(value.trim_end_matches('\n'), "from-a-file");

    ok(&rvirsh(&root, &["secret-undefine", UUID]));
    let list = ok(&rvirsh(&root, &["secret-list"]));
    assert!(!list.contains(UUID), "{list}");
}

//! Session mode: opening a `*:///session` URI whose daemon is not running starts it, as libvirt's
//! client does, and waits for its readiness notification.
//!
//! This file is a test binary of its own, with one test, on purpose: it sets environment
//! variables, which must happen before any other thread of the process runs (with `cargo test`,
//! the tests of one binary share a process).

use nix::sys::signal::Signal;
use rvirt::Connect;
use rvirt_e2e::{TestRoot, bin_dir, binary};

#[tokio::test]
async fn opening_a_session_uri_starts_the_daemon_and_uses_it() {
    let root = TestRoot::new();
    let runtime = "/run/user/4242";
    binary("virtsecretd"); // built before the client looks for it
    // SAFETY: this test is alone in its process and sets the variables before it starts any
    // thread of its own; the client and the daemon it starts read them.
    unsafe {
        std::env::set_var("RVIRT_ROOT", root.path());
        std::env::set_var("XDG_RUNTIME_DIR", runtime);
        std::env::set_var("HOME", root.path().join("home"));
        std::env::set_var("RVIRT_DAEMON_DIR", bin_dir());
    }
    let socket = root.path().join("run/user/4242/rvirt/virtsecretd-sock");
    assert!(!socket.exists());

    let conn = Connect::open("secret:///session")
        .await
        .expect("the session daemon starts on demand");
    assert!(
        socket.exists(),
        "the session daemon listens on its session socket"
    );
    assert_eq!(conn.driver_type().await.expect("a call"), "secret");
    let info = conn.connection_info().await.expect("connection info");
    assert_eq!(info.daemon, "virtsecretd");

    // A second open finds the daemon running and does not start another.
    let pid_file = root.path().join("run/user/4242/rvirt/virtsecretd.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let again = Connect::open("secret:///session").await.expect("second open");
    again.driver_type().await.expect("a call");
    let still: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(pid, still);

    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM);
}

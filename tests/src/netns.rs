//! Network namespaces a test creates (`rvirt-test-*`), and the commands run in them: every
//! network test works inside these and never touches the host's own interfaces. A namespace's
//! processes are killed and the namespace deleted when its [`Netns`] is dropped, also when the
//! test fails.

use std::process::{Command, Output, Stdio};

use nix::sys::signal::Signal;

/// Runs `program` with `args`, standard input closed; its output, whatever its status.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Runs `program` with `args` and fails the test unless it succeeds; its standard output.
pub fn check(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace this test created, with its loopback up.
#[derive(Debug)]
pub struct Netns {
    /// Its name (`rvirt-test-<pid>-<nanos>-<n>`).
    pub name: String,
}

impl Netns {
    /// A new namespace with a name no other test uses.
    pub fn new() -> Netns {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "rvirt-test-{:x}-{:x}-{}",
            std::process::id(),
            nanos,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        check("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        check("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> ARGS`.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ARGS` run inside the namespace (`ip netns exec`).
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// The processes in the namespace.
    pub fn pids(&self) -> Vec<u32> {
        String::from_utf8_lossy(&run("ip", &["netns", "pids", &self.name]).stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Whether link `name` exists in the namespace.
    pub fn has_link(&self, name: &str) -> bool {
        self.ip(&["link", "show", "dev", name]).status.success()
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

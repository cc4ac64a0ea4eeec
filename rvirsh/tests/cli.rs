//! rvirsh as a user runs it: the built binary against `test:///default` (or a `<node>` file of
//! its own), checking what it prints and its exit status.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

struct Run {
    out: String,
    err: String,
    code: i32,
}

/// Runs rvirsh with `args`, feeding `stdin` when given, with a private `RVIRT_ROOT` and no
/// default URI from the caller's environment.
fn rvirsh(args: &[&str], stdin: Option<&str>) -> Run {
    let root = tempfile::tempdir().expect("root");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rvirsh"));
    cmd.args(args)
        .env("RVIRT_ROOT", root.path())
        .env("XDG_CONFIG_HOME", root.path().join("config"))
        .env("XDG_RUNTIME_DIR", root.path().join("run"))
        .env_remove("RVIRT_DEFAULT_URI")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn rvirsh");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    let output = child.wait_with_output().expect("rvirsh runs");
    Run {
        out: String::from_utf8_lossy(&output.stdout).into_owned(),
        err: String::from_utf8_lossy(&output.stderr).into_owned(),
        code: output.status.code().unwrap_or(-1),
    }
}

fn test(args: &[&str]) -> Run {
    let mut all = vec!["-c", "test:///default"];
    all.extend_from_slice(args);
    rvirsh(&all, None)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path.to_string_lossy().into_owned()
}

const VM1: &str = "<domain type='test'><name>vm1</name><memory unit='MiB'>256</memory><vcpu>2</vcpu><os><type>hvm</type></os></domain>";

#[test]
fn quick_start_lists_the_test_domain_as_virsh_does() {
    let r = test(&["list", "--all"]);
    assert_eq!(
        r.out,
        " Id   Name   State\n----------------------\n 1    test   running\n\n"
    );
    assert_eq!((r.err.as_str(), r.code), ("", 0));
}

#[test]
fn quiet_drops_headers_and_blank_lines() {
    let r = rvirsh(&["-q", "-c", "test:///default", "list"], None);
    assert_eq!(r.out, " 1   test   running\n");
}

#[test]
fn list_name_and_uuid_forms() {
    assert_eq!(test(&["list", "--name"]).out, "test\n\n");
    assert_eq!(
        test(&["list", "--uuid"]).out,
        "6695eb01-f6a4-8304-79aa-97f2502e193f\n\n"
    );
    assert_eq!(
        test(&["list", "--inactive"]).out,
        " Id   Name   State\n--------------------\n\n"
    );
}

#[test]
fn dominfo_domstate_and_ids_of_the_test_domain() {
    let r = test(&["dominfo", "test"]);
    assert!(
        r.out.starts_with("Id:             1\nName:           test\n"),
        "{}",
        r.out
    );
    assert!(
        r.out
            .contains("Max memory:     8388608 KiB\nUsed memory:    2097152 KiB\n")
    );
    assert_eq!(test(&["domstate", "test"]).out, "running\n\n");
    assert_eq!(
        test(&["domstate", "test", "--reason"]).out,
        "running (booted)\n\n"
    );
    assert_eq!(test(&["domid", "test"]).out, "1\n\n");
    assert_eq!(test(&["domname", "1"]).out, "test\n\n");
    assert_eq!(
        test(&["domuuid", "test"]).out,
        "6695eb01-f6a4-8304-79aa-97f2502e193f\n\n"
    );
    assert_eq!(
        test(&["domname", "6695eb01-f6a4-8304-79aa-97f2502e193f"]).out,
        "test\n\n"
    );
}

#[test]
fn a_missing_domain_is_two_error_lines_and_status_1() {
    let r = test(&["dominfo", "nosuch"]);
    assert_eq!(
        r.err,
        "error: failed to get domain 'nosuch'\nerror: Domain not found: no domain with matching name 'nosuch'\n"
    );
    assert_eq!(r.code, 1);
}

#[test]
fn starting_a_running_domain_fails_like_virsh() {
    let r = test(&["start", "test"]);
    assert_eq!((r.err.as_str(), r.code), ("error: Domain is already active\n", 1));
}

#[test]
fn unknown_commands_and_options_are_reported() {
    let r = test(&["frobnicate"]);
    assert_eq!(
        (r.err.as_str(), r.code),
        ("error: unknown command: 'frobnicate'\n", 1)
    );
    let r = test(&["list", "--bogus"]);
    assert_eq!(r.err, "error: command 'list' doesn't support option --bogus\n");
    let r = test(&["dominfo"]);
    assert_eq!(r.err, "error: command 'dominfo' requires <domain> option\n");
    let r = rvirsh(&["-z"], None);
    assert_eq!(
        (r.err.as_str(), r.code),
        ("error: unsupported option '-z'. See --help.\n", 1)
    );
}

#[test]
fn lifecycle_script_runs_in_one_process() {
    let dir = tempfile::tempdir().expect("dir");
    let file = write(dir.path(), "vm1.xml", VM1);
    let script = format!(
        "define {file}\nstart vm1\nsuspend vm1\ndomstate vm1 --reason\nresume vm1\ndomstate vm1 --reason\nshutdown vm1\ndomstate vm1 --reason\nundefine vm1\nlist --all --name\n"
    );
    let r = rvirsh(&["-c", "test:///default"], Some(&script));
    assert_eq!(
        r.out,
        format!(
            "Domain 'vm1' defined from {file}\n\nDomain 'vm1' started\n\nDomain 'vm1' suspended\n\npaused (user)\n\nDomain 'vm1' resumed\n\nrunning (unpaused)\n\nDomain 'vm1' is being shutdown\n\nshut off (shutdown)\n\nDomain 'vm1' has been undefined\n\ntest\n\n"
        )
    );
    assert_eq!((r.err.as_str(), r.code), ("", 0));
}

#[test]
fn a_failing_line_in_a_script_makes_the_status_1_and_the_rest_still_runs() {
    let r = rvirsh(&["-c", "test:///default"], Some("start test\ndomstate test\n"));
    assert_eq!(r.err, "error: Domain is already active\n");
    assert_eq!(r.out, "\nrunning\n\n");
    assert_eq!(r.code, 1);
}

#[test]
fn quotes_semicolons_and_comments_in_command_lines() {
    let r = rvirsh(
        &["-c", "test:///default"],
        Some("domstate 'test' ; domid \"test\" # a comment\n"),
    );
    assert_eq!(r.out, "running\n\n1\n\n");
    let r = rvirsh(&["-c", "test:///default", "domstate test; domid test"], None);
    assert_eq!(r.out, "running\n\n1\n\n");
}

#[test]
fn destroy_reboot_reset_and_autostart_messages() {
    let r = rvirsh(
        &["-c", "test:///default"],
        Some(
            "reboot test\nreset test\nautostart test\nautostart --disable test\ndestroy test\ndomstate --reason test\n",
        ),
    );
    assert_eq!(
        r.out,
        "Domain 'test' is being rebooted\n\nDomain 'test' was reset\n\nDomain 'test' marked as autostarted\n\nDomain 'test' unmarked as autostarted\n\nDomain 'test' destroyed\n\nshut off (destroyed)\n\n"
    );
    assert_eq!(r.code, 0, "{}", r.err);
}

#[test]
fn setmem_setmaxmem_and_setvcpus_change_dominfo() {
    let r = rvirsh(
        &["-c", "test:///default"],
        Some(
            "setmem test 1G\nsetvcpus test 1\ndominfo test\ndestroy test\nsetmaxmem test 4G\nsetvcpus test 4 --maximum --config\ndominfo test\n",
        ),
    );
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.out.contains("CPU(s):         1\n"), "{}", r.out);
    assert!(r.out.contains("Used memory:    1048576 KiB\n"), "{}", r.out);
    assert!(r.out.contains("Max memory:     4194304 KiB\n"), "{}", r.out);
    let r = test(&["setmem", "test", "64G"]);
    assert_eq!(r.code, 1);
    assert!(
        r.err
            .starts_with("error: Invalid argument: cannot set memory higher"),
        "{}",
        r.err
    );
}

#[test]
fn create_makes_a_transient_running_domain() {
    let dir = tempfile::tempdir().expect("dir");
    let file = write(dir.path(), "vm1.xml", VM1);
    let r = rvirsh(
        &["-c", "test:///default"],
        Some(&format!(
            "create {file} --paused\ndominfo vm1\ndestroy vm1\ndomstate vm1\n"
        )),
    );
    assert!(
        r.out
            .starts_with(&format!("Domain 'vm1' created from {file}\n\n")),
        "{}",
        r.out
    );
    assert!(r.out.contains("State:          paused\n") && r.out.contains("Persistent:     no\n"));
    assert_eq!(
        r.err,
        "error: failed to get domain 'vm1'\nerror: Domain not found: no domain with matching name 'vm1'\n"
    );
}

#[test]
fn dumpxml_prints_the_definition_with_the_live_id() {
    let r = test(&["dumpxml", "test"]);
    assert!(r.out.starts_with("<domain id='1' type='test'>"), "{}", r.out);
    assert!(
        r.out
            .contains("<uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>")
    );
    let r = test(&["dumpxml", "--inactive", "test"]);
    assert!(r.out.starts_with("<domain type='test'>"), "{}", r.out);
}

#[test]
fn attach_and_detach_device_change_the_definition_and_report_errors_with_virshs_context() {
    let dir = tempfile::tempdir().expect("dir");
    let file = write(
        dir.path(),
        "disk.xml",
        "<disk type='file' device='disk'><source file='/x'/><target dev='vdb' bus='virtio'/></disk>",
    );
    let script = format!(
        "attach-device test {file}\ndumpxml test\ndetach-device test {file}\ndumpxml test\ndetach-device test {file}\n"
    );
    let r = rvirsh(&["-c", "test:///default"], Some(&script));
    assert_eq!(r.code, 1, "the last detach fails: {}", r.err);
    assert!(r.out.contains("Device attached successfully"), "{}", r.out);
    assert!(r.out.contains("Device detached successfully"), "{}", r.out);
    assert_eq!(
        r.out.matches("dev='vdb'").count() + r.out.matches("dev=\"vdb\"").count(),
        1,
        "{}",
        r.out
    );
    assert!(
        r.err
            .starts_with(&format!("error: Failed to detach device from {file}\nerror: ")),
        "{}",
        r.err
    );
}

#[test]
fn console_is_not_served_yet() {
    let r = test(&["console", "test"]);
    assert_eq!(r.code, 1);
    assert!(r.err.starts_with("error: Operation not supported"), "{}", r.err);
}

#[test]
fn host_commands_match_the_test_driver() {
    assert_eq!(
        test(&["version", "--daemon"]).out,
        "Compiled against library: libvirt 11.3.0\nUsing library: libvirt 11.3.0\nUsing API: TEST 11.3.0\nRunning hypervisor: TEST 0.0.2\nRunning against daemon: 11.3.0\n\n"
    );
    assert_eq!(
        test(&["nodeinfo"]).out,
        "CPU model:           i686\nCPU(s):              16\nCPU frequency:       1400 MHz\nCPU socket(s):       2\nCore(s) per socket:  2\nThread(s) per core:  2\nNUMA cell(s):        2\nMemory size:         3145728 KiB\n\n"
    );
    assert_eq!(test(&["uri"]).out, "test:///default\n\n");
    let host = test(&["hostname"]);
    assert_eq!(host.code, 0);
    assert!(!host.out.trim().is_empty());
    let caps = test(&["capabilities"]);
    assert!(caps.out.starts_with("<capabilities>"), "{}", caps.out);
    let dcaps = test(&["domcapabilities"]);
    assert_eq!(dcaps.code, 0, "{}", dcaps.err);
    assert!(dcaps.out.starts_with("<domainCapabilities>"), "{}", dcaps.out);
}

#[test]
fn network_commands_follow_virsh() {
    assert_eq!(
        test(&["net-list"]).out,
        " Name      State    Autostart   Persistent\n--------------------------------------------\n default   active   no          yes\n\n"
    );
    assert_eq!(
        test(&["net-info", "default"]).out,
        "Name:           default\nUUID:           dd8fe884-6c02-601e-7551-cca97df1c5df\nActive:         yes\nPersistent:     yes\nAutostart:      no\nBridge:         virbr0\n\n"
    );
    assert_eq!(
        test(&["net-uuid", "default"]).out,
        "dd8fe884-6c02-601e-7551-cca97df1c5df\n\n"
    );
    assert_eq!(
        test(&["net-name", "dd8fe884-6c02-601e-7551-cca97df1c5df"]).out,
        "default\n\n"
    );
    assert!(
        test(&["net-dumpxml", "default"])
            .out
            .starts_with("<network>\n  <name>default</name>")
    );
    assert_eq!(
        test(&["net-dhcp-leases", "default"]).out,
        " Expiry Time   MAC address   Protocol   IP address   Hostname   Client ID or DUID\n-----------------------------------------------------------------------------------\n\n"
    );
    let dir = tempfile::tempdir().expect("dir");
    let file = write(
        dir.path(),
        "net.xml",
        "<network><name>net2</name><bridge name='virbr9'/></network>",
    );
    let transient = write(dir.path(), "net3.xml", "<network><name>net3</name></network>");
    let script = format!(
        "net-define {file}\nnet-start net2\nnet-start net2\nnet-autostart net2\nnet-list --all --name\nnet-destroy net2\nnet-undefine net2\nnet-create {transient}\nnet-destroy net3\nnet-info net3\n"
    );
    let r = rvirsh(&["-c", "test:///default"], Some(&script));
    assert_eq!(
        r.out,
        format!(
            "Network net2 defined from {file}\n\nNetwork net2 started\n\n\nNetwork net2 marked as autostarted\n\ndefault\nnet2\n\nNetwork net2 destroyed\n\nNetwork net2 has been undefined\n\nNetwork net3 created from {transient}\n\nNetwork net3 destroyed\n\n\n"
        )
    );
    assert_eq!(
        r.err,
        "error: Failed to start network net2\nerror: Requested operation is not valid: network 'net2' is already running\nerror: failed to get network 'net3'\nerror: Network not found: no network with matching name 'net3'\n"
    );
}

#[test]
fn pool_commands_follow_virsh() {
    assert_eq!(
        test(&["pool-list"]).out,
        " Name           State    Autostart\n------------------------------------\n default-pool   active   no\n\n"
    );
    assert_eq!(
        test(&["pool-info", "default-pool"]).out,
        "Name:           default-pool\nUUID:           dfe224cb-28fb-8dd0-c4b2-64eb3f0f4566\nState:          running\nPersistent:     yes\nAutostart:      no\nCapacity:       100.00 GiB\nAllocation:     0.00 B\nAvailable:      100.00 GiB\n\n"
    );
    let dir = tempfile::tempdir().expect("dir");
    let file = write(
        dir.path(),
        "pool.xml",
        "<pool type='dir'><name>p2</name><target><path>/p2</path></target></pool>",
    );
    let script = format!(
        "pool-define {file}\npool-build p2\npool-start p2\npool-autostart p2\npool-refresh p2\npool-list --all --details\npool-undefine p2\npool-destroy p2\npool-delete p2\npool-undefine p2\npool-dumpxml default-pool\n"
    );
    let r = rvirsh(&["-c", "test:///default"], Some(&script));
    assert_eq!(
        r.err,
        "error: Failed to undefine pool p2\nerror: Requested operation is not valid: storage pool 'p2' is active\n"
    );
    assert!(r.out.starts_with(&format!(
        "Pool p2 defined from {file}\n\nPool p2 built\n\nPool p2 started\n\nPool p2 marked as autostarted\n\nPool p2 refreshed\n\n"
    )), "{}", r.out);
    assert!(
        r.out.contains(
            " p2             running   yes         yes          100.00 GiB   0.00 B       100.00 GiB\n"
        ),
        "{}",
        r.out
    );
    assert!(
        r.out.contains(
            "Pool p2 destroyed\n\nPool p2 deleted\n\nPool p2 has been undefined\n\n<pool type='dir'>"
        ),
        "{}",
        r.out
    );
}

#[test]
fn volume_commands_and_transfers_follow_virsh() {
    let dir = tempfile::tempdir().expect("dir");
    let vol = write(
        dir.path(),
        "vol.xml",
        "<volume><name>disk1.img</name><capacity unit='MiB'>4</capacity><allocation unit='MiB'>1</allocation></volume>",
    );
    let copy = write(
        dir.path(),
        "copy.xml",
        "<volume><name>copy.img</name><capacity unit='MiB'>4</capacity></volume>",
    );
    let mut data = vec![0u8; 4 << 20];
    for (i, b) in data.iter_mut().enumerate().take(1 << 20) {
        *b = (i % 251) as u8 + 1;
    }
    let input = dir.path().join("in.bin");
    std::fs::write(&input, &data).expect("data");
    let (out1, out2) = (dir.path().join("out1.bin"), dir.path().join("out2.bin"));
    let script = format!(
        "vol-create default-pool {vol}\nvol-list default-pool --details\nvol-info disk1.img --pool default-pool --bytes\nvol-upload disk1.img {} --pool default-pool --sparse\nvol-download /default-pool/disk1.img {} --sparse\nvol-create-from default-pool {copy} disk1.img --inputpool default-pool\nvol-download copy.img {} --pool default-pool\nvol-resize disk1.img 8M --pool default-pool\nvol-wipe disk1.img --pool default-pool\nvol-path disk1.img --pool default-pool\nvol-key /default-pool/disk1.img\nvol-name /default-pool/disk1.img\nvol-pool /default-pool/disk1.img\nvol-delete copy.img --pool default-pool\nvol-info nosuch\n",
        input.display(),
        out1.display(),
        out2.display()
    );
    let r = rvirsh(&["-c", "test:///default"], Some(&script));
    assert_eq!(
        r.out,
        format!(
            concat!(
                "Vol disk1.img created from {vol}\n\n",
                " Name        Path                      Type   Capacity   Allocation\n",
                "---------------------------------------------------------------------\n",
                " disk1.img   /default-pool/disk1.img   file   4.00 MiB   1.00 MiB\n\n",
                "Name:           disk1.img\nType:           file\nCapacity:       4194304 bytes\nAllocation:     1048576 bytes\n\n",
                "\n\n",
                "Vol copy.img created from input vol disk1.img\n\n",
                "\n",
                "Size of volume 'disk1.img' successfully changed to 8M\n\n",
                "Vol disk1.img wiped\n\n",
                "/default-pool/disk1.img\n\n/default-pool/disk1.img\n\ndisk1.img\n\ndefault-pool\n\n",
                "Vol copy.img deleted\n\n\n",
            ),
            vol = vol,
        )
    );
    assert_eq!(
        r.err,
        "error: failed to get vol 'nosuch', specifying --pool might help\nerror: Storage volume not found: no storage vol with matching path 'nosuch'\n"
    );
    assert_eq!(std::fs::read(&out1).expect("out1"), data);
    assert_eq!(std::fs::read(&out2).expect("out2"), data);
}

#[test]
fn secret_commands_follow_virsh() {
    let dir = tempfile::tempdir().expect("dir");
    let uuid = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f";
    let file = write(
        dir.path(),
        "secret.xml",
        &format!(
            "<secret ephemeral='no' private='no'><uuid>{uuid}</uuid><usage type='volume'><volume>/var/lib/x.img</volume></usage></secret>"
        ),
    );
    let value = write(dir.path(), "value.txt", "c2VjcmV0\n");
    let script = format!(
        "secret-define {file}\nsecret-list\nsecret-set-value {uuid} --file {value}\nsecret-get-value {uuid}\nsecret-get-value --plain {uuid}\nsecret-set-value {uuid} --base64 b3RoZXI=\nsecret-get-value {uuid} --plain\nsecret-dumpxml {uuid}\nsecret-undefine {uuid}\nsecret-get-value {uuid}\nsecret-set-value {uuid}\n"
    );
    let r = rvirsh(&["-c", "test:///default"], Some(&script));
    assert_eq!(
        r.out,
        format!(
            concat!(
                "Secret {uuid} created\n\n",
                " UUID                                   Usage\n",
                "---------------------------------------------------------------\n",
                " {uuid}   volume /var/lib/x.img\n\n",
                "Secret value set\n\n",
                "c2VjcmV0\n",
                "secret\n",
                "Secret value set\n\n",
                "other\n",
                "<secret ephemeral='no' private='no'><uuid>{uuid}</uuid><usage type='volume'><volume>/var/lib/x.img</volume></usage></secret>\n\n",
                "Secret {uuid} deleted\n\n",
                "\n\n",
            ),
            uuid = uuid
        )
    );
    assert_eq!(
        r.err,
        format!(
            "error: Passing secret value as command-line argument is insecure!\nerror: failed to get secret '{uuid}'\nerror: Secret not found: no secret with matching uuid '{uuid}'\nerror: failed to get secret '{uuid}'\nerror: Secret not found: no secret with matching uuid '{uuid}'\n"
        )
    );
}

#[test]
fn private_secret_values_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let file = write(
        dir.path(),
        "s.xml",
        "<secret private='yes'><uuid>1b81f5b2-8403-7b23-c8d6-21ccc2f80d6f</uuid></secret>",
    );
    let script = format!(
        "secret-define {file}\nsecret-set-value 1b81f5b2-8403-7b23-c8d6-21ccc2f80d6f --base64 eA==\nsecret-get-value 1b81f5b2-8403-7b23-c8d6-21ccc2f80d6f\n"
    );
    let r = rvirsh(&["-q", "-c", "test:///default"], Some(&script));
    assert!(
        r.err.ends_with(
            "secret 1b81f5b2-8403-7b23-c8d6-21ccc2f80d6f is private: its value is never returned to clients\n"
        ),
        "{}",
        r.err
    );
    assert_eq!(r.code, 1);
}

#[test]
fn event_without_changes_times_out_and_fails() {
    let r = test(&["event", "--all", "--loop", "--timeout", "1"]);
    assert_eq!(r.out, "event loop timed out\nevents received: 0\n\n");
    assert_eq!(r.code, 1);
}

#[test]
fn event_list_names_virshs_event_types() {
    let r = test(&["event", "--list"]);
    assert!(r.out.starts_with("lifecycle\nreboot\nrtc-change\n"), "{}", r.out);
    let r = test(&["event"]);
    assert_eq!(
        r.err,
        "error: one of --list, --all, or --event <type> is required\n"
    );
}

#[test]
fn read_only_connections_refuse_changes() {
    let r = rvirsh(&["-r", "-c", "test:///default", "destroy", "test"], None);
    assert_eq!(r.code, 1);
    assert!(
        r.err
            .starts_with("error: Failed to destroy domain 'test'\nerror: "),
        "{}",
        r.err
    );
    assert!(r.err.contains("read-only"), "{}", r.err);
    let r = rvirsh(&["-r", "-c", "test:///default", "domstate", "test"], None);
    assert_eq!(r.out, "running\n\n");
}

#[test]
fn a_node_file_loads_domains_pools_volumes_and_secrets() {
    let dir = tempfile::tempdir().expect("dir");
    let node = write(
        dir.path(),
        "node.xml",
        "<node>\n<domain type='test'><name>a</name><memory>1024</memory></domain>\n<pool type='dir'><name>p</name><target><path>/p</path></target><volume><name>v.img</name><capacity>1024</capacity></volume></pool>\n<secret><uuid>2c81f5b2-8403-7b23-c8d6-21ccc2f80d6f</uuid></secret>\n</node>",
    );
    let uri = format!("test://{node}");
    let r = rvirsh(
        &["-q", "-c", &uri],
        Some("list --name\nvol-list p\nsecret-list\npool-list --name\n"),
    );
    assert_eq!(
        r.out,
        "a\n v.img   /p/v.img\n 2c81f5b2-8403-7b23-c8d6-21ccc2f80d6f   Unused\np                   \n"
    );
    assert_eq!(r.code, 0, "{}", r.err);
}

#[test]
fn the_default_uri_comes_from_the_environment_then_the_test_driver() {
    let root = tempfile::tempdir().expect("root");
    let dir = tempfile::tempdir().expect("dir");
    let node = write(dir.path(), "node.xml", "<node/>");
    let out = Command::new(env!("CARGO_BIN_EXE_rvirsh"))
        .args(["uri"])
        .env("RVIRT_ROOT", root.path())
        .env("XDG_CONFIG_HOME", root.path().join("config"))
        .env("XDG_RUNTIME_DIR", root.path().join("run"))
        .env("RVIRT_DEFAULT_URI", format!("test://{node}"))
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("test://{node}\n\n"));
    let r = rvirsh(&["uri"], None);
    assert_eq!(r.out, "test:///default\n\n");
}

#[test]
fn help_lists_commands_and_explains_one() {
    let r = test(&["help"]);
    assert!(
        r.out
            .starts_with("Grouping of commands:\n\n Domain Management (help keyword 'domain'):\n"),
        "{}",
        r.out
    );
    let r = test(&["help", "pool-info"]);
    assert!(
        r.out
            .contains("  NAME\n    pool-info - storage pool information\n"),
        "{}",
        r.out
    );
    let r = test(&["list", "--help"]);
    assert!(
        r.out.contains("  SYNOPSIS\n    list [--inactive] [--all]"),
        "{}",
        r.out
    );
    let r = rvirsh(&["--help"], None);
    assert!(r.out.contains("-c | --connect=URI"), "{}", r.out);
}

#[test]
fn pool_create_makes_a_transient_pool_that_destroy_removes() {
    let dir = tempfile::tempdir().expect("dir");
    let file = write(
        dir.path(),
        "pool.xml",
        "<pool type='dir'><name>tmp</name><target><path>/tmp-pool</path></target></pool>",
    );
    let script = format!(
        "pool-create {file} --build\npool-info tmp\npool-autostart tmp\npool-destroy tmp\npool-info tmp\n"
    );
    let r = rvirsh(&["-c", "test:///default"], Some(&script));
    assert!(
        r.out
            .starts_with(&format!("Pool tmp created from {file}\n\nName:           tmp\n")),
        "{}",
        r.out
    );
    assert!(r.out.contains("Persistent:     no\n"), "{}", r.out);
    assert!(r.out.contains("Pool tmp destroyed\n"), "{}", r.out);
    assert!(
        r.err
            .starts_with("error: failed to mark pool tmp as autostarted\nerror: Invalid argument"),
        "{}",
        r.err
    );
    assert!(r.err.ends_with("error: failed to get pool 'tmp'\nerror: Storage pool not found: no storage pool with matching name 'tmp'\n"), "{}", r.err);
}

#[test]
fn connect_switches_the_connection_inside_one_process() {
    let dir = tempfile::tempdir().expect("dir");
    let node = write(
        dir.path(),
        "node.xml",
        "<node><domain type='test'><name>other</name><memory>1024</memory></domain></node>",
    );
    let script =
        format!("list --name\nconnect test://{node}\nlist --name\nconnect --readonly\ndestroy other\n");
    let r = rvirsh(&["-c", "test:///default"], Some(&script));
    assert_eq!(r.out, "test\n\n\nother\n\n\n\n");
    assert!(
        r.err.starts_with("error: Failed to destroy domain 'other'\n"),
        "{}",
        r.err
    );
    assert_eq!(r.code, 1);
}

#[test]
fn vol_wipe_refuses_unknown_algorithms() {
    let dir = tempfile::tempdir().expect("dir");
    let vol = write(
        dir.path(),
        "v.xml",
        "<volume><name>w</name><capacity>16</capacity></volume>",
    );
    let script = format!(
        "vol-create default-pool {vol}\nvol-wipe w --pool default-pool --algorithm shred\nvol-wipe w --pool default-pool --algorithm gutmann\n"
    );
    let r = rvirsh(&["-q", "-c", "test:///default"], Some(&script));
    assert_eq!(r.err, "error: Unsupported algorithm 'shred'\n");
    assert_eq!(r.code, 1);
}

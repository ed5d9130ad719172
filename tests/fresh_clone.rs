//! A newcomer's first five minutes: clone the repository, read the README's first screen,
//! and run its two commands in the order it gives them. The run command must build and
//! start the agent by itself (installing what it lacks) and put `wharf` on the PATH; the
//! test command must install everything the suite needs.
//!
//! Its own test binary, so cargo runs it alone: the release build it triggers would
//! otherwise load the machine under the timing-sensitive end-to-end tests.
//!
//! What the test sets: free ports and a temp data dir through the agent's environment
//! variables, `WHARF_BIN_DIR` (where the run command installs `wharf`), the Docker watcher
//! off, the workspace's own target dir (so the build reuses compiled dependencies), and
//! `WHARF_TEST_ONLY=setup` for the test command, which would otherwise run this very test
//! again from inside itself.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("free UDP port").port()
}

/// The shell commands of the README's first screen: every ```sh block between the
/// "Set up on a fresh machine" heading and the first `---`.
fn first_screen_commands(readme: &str) -> Vec<String> {
    let start = readme.find("## Set up on a fresh machine").expect("README has the set-up section");
    let screen = &readme[start..];
    let screen = &screen[..screen.find("\n---").expect("the first screen ends with ---")];
    let mut out = Vec::new();
    let mut in_block = false;
    for line in screen.lines() {
        match (in_block, line.trim()) {
            (false, "```sh") => in_block = true,
            (true, "```") => in_block = false,
            (true, cmd) if !cmd.is_empty() && !cmd.starts_with('#') => out.push(cmd.to_string()),
            _ => {}
        }
    }
    out
}

/// GET `path` on 127.0.0.1:`port` with curl; the body of a 200 answer, or `None`.
fn http_get(port: u16, path: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5", &format!("http://127.0.0.1:{port}{path}")])
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

/// Kills the run command's process group (bash, cargo, then the agent) when dropped.
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{}", self.0.id())]).status();
        let _ = self.0.wait();
    }
}

#[test]
fn readme_commands_work_on_a_fresh_clone_in_the_readme_order() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let clone = tmp.path().join("wharf");
    let status = Command::new("git")
        .args(["clone", "--quiet", repo.to_str().expect("utf8 path"), clone.to_str().expect("utf8 path")])
        .status()
        .expect("run git clone");
    assert!(status.success(), "git clone failed");

    let readme = std::fs::read_to_string(clone.join("README.md")).expect("README.md");
    let commands = first_screen_commands(&readme);
    assert_eq!(commands.len(), 2, "the README's first screen gives exactly two commands: {commands:?}");
    let (run_cmd, test_cmd) = (&commands[0], &commands[1]);
    let bin_dir = tmp.path().join("bin");
    assert!(
        readme.contains("puts `wharf` on the PATH") && readme.contains("WHARF_BIN_DIR"),
        "the README says on its first screen how `wharf` gets on the PATH"
    );

    // 1. The run command, stopped once the API answers.
    let http = free_port();
    let log_path = tmp.path().join("run.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let run = Command::new("bash")
        .process_group(0)
        .args(["-c", run_cmd])
        .current_dir(&clone)
        .env("CARGO_TARGET_DIR", repo.join("target"))
        .env("WHARF_BIN_DIR", &bin_dir)
        .env("WHARF_DATA_DIR", tmp.path().join("data"))
        .env("WHARF_HTTP_PORT", http.to_string())
        .env("WHARF_DNS_PORT", free_port().to_string())
        .env("WHARF_SERVER_PORT", free_port().to_string())
        .env("WHARF_SERF_LAN_PORT", free_udp_port().to_string())
        .env("WHARF_PROXY_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("WHARF_DOCKER", "off")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .expect("start the run command");
    let mut run = Group(run);
    // A cold release build takes minutes on two cores.
    let deadline = Instant::now() + Duration::from_secs(40 * 60);
    let leader = loop {
        if let Some(body) = http_get(http, "/v1/status/leader")
            && body.len() > 2
        {
            break body;
        }
        if let Ok(Some(status)) = run.0.try_wait() {
            panic!("`{run_cmd}` exited with {status}:\n{}", std::fs::read_to_string(&log_path).unwrap_or_default());
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not answer:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(leader.starts_with('"'), "a leader address: {leader}");
    drop(run);
    let version = Command::new(bin_dir.join("wharf")).arg("version").output().expect("run the installed wharf");
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("wharf v"), "{version:?}");

    // 2. The test command: everything the suite needs gets installed and found.
    let out = Command::new("bash")
        .args(["-c", test_cmd])
        .current_dir(&clone)
        .env("CARGO_TARGET_DIR", repo.join("target"))
        .env("WHARF_TEST_ONLY", "setup")
        .stdin(Stdio::null())
        .output()
        .expect("run the test command");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "`{test_cmd}` failed:\n{text}");
    assert!(text.contains("setup complete: every prerequisite of the test suite is installed"), "{text}");
}

#[test]
fn first_screen_parser_reads_only_the_first_screen() {
    let readme = "# x\n## Set up on a fresh machine\ntext\n```sh\nscripts/run\n```\n```sh\n# note\nscripts/test\n```\n---\n```sh\nlater\n```\n";
    assert_eq!(first_screen_commands(readme), ["scripts/run", "scripts/test"]);
}

//! The bounded `git` runner and reading a commit's tree, with real `git` in a temporary
//! repository.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::repo::Repo;
use super::run::{RunError, run};

fn git(dir: &Path, args: &[&str]) {
    let o = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .env_remove("GIT_DIR")
        .output()
        .unwrap();
    assert!(o.status.success(), "git {args:?}: {o:?}");
}

/// Whether the process `pid` still runs (a zombie waiting for its parent does not).
fn running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_string()))
        .is_some_and(|rest| !rest.starts_with('Z'))
}

#[test]
fn a_command_past_its_time_is_stopped_with_what_it_started() {
    // The helper a `git fetch` starts (ssh, index-pack) stands in as a background sleep.
    let t = tempfile::tempdir().unwrap();
    let pid_file = t.path().join("pid");
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("sleep 30 & echo $! > {}; wait", pid_file.display()));
    let started = Instant::now();
    let e = run(c, "sh", None, Duration::from_millis(300), 1024)
        .err()
        .unwrap();
    assert!(matches!(e, RunError::Timeout { .. }), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(2);
    while running(&pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !running(&pid),
        "the helper {pid} outlived the stopped command"
    );
}

#[test]
fn a_command_printing_too_much_is_stopped() {
    let mut c = Command::new("sh");
    c.args(["-c", "yes"]);
    let t = Instant::now();
    let e = run(c, "yes", None, Duration::from_secs(10), 64 << 10)
        .err()
        .unwrap();
    assert!(matches!(e, RunError::TooMuch { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn a_tree_is_read_by_the_folder_rule_and_symlinks_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    git(w, &["init", "-q", "-b", "main"]);
    std::fs::write(
        w.join("hosts.toml"),
        "[hosts.web-1]\naddress = \"10.0.0.1\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(w.join("team")).unwrap();
    std::fs::write(w.join("team/people.toml"), "[users.bob]\n").unwrap();
    std::fs::create_dir_all(w.join("tests")).unwrap();
    std::fs::write(w.join("tests/cases.toml"), "not policy").unwrap();
    std::fs::write(w.join(".hidden.toml"), "not policy").unwrap();
    std::fs::write(w.join("README.md"), "not policy").unwrap();
    git(w, &["add", "-A"]);
    git(w, &["commit", "-q", "-m", "one"]);
    let repo = Repo::at(&w.join(".git"));
    let head = repo.resolve("HEAD").unwrap().unwrap();
    let raw = repo.raw_commit(&head).unwrap();
    let tree = super::signature::parse_commit(&raw).unwrap().tree;
    let files = repo.read_tree(&tree, "c1").unwrap();
    let names: Vec<_> = files.iter().map(|f| f.rel.as_str()).collect();
    assert_eq!(names, ["hosts.toml", "team/people.toml"]);
    assert_eq!(files[0].display, "c1:hosts.toml");
    assert!(files[0].text.contains("10.0.0.1"));

    std::os::unix::fs::symlink("/etc/passwd", w.join("link.toml")).unwrap();
    git(w, &["add", "-A"]);
    git(w, &["commit", "-q", "-m", "two"]);
    let head = repo.resolve("HEAD").unwrap().unwrap();
    let tree = super::signature::parse_commit(&repo.raw_commit(&head).unwrap())
        .unwrap()
        .tree;
    let e = repo.read_tree(&tree, "c2").unwrap_err();
    assert!(
        e.0[0].to_string().contains("c2:link.toml: a symbolic link"),
        "{e}"
    );
    assert!(repo.resolve("no-such-ref").unwrap().is_none());
}

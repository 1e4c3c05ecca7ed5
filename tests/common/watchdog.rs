//! A watchdog for tests that talk to FUSE: a request that is never answered must fail the
//! run, saying what hung, not stall it.

use std::fs;
use std::process::Command;

/// Guard from [`watchdog`]; dropping it stands the watchdog down.
pub struct Watchdog(Option<std::sync::mpsc::Sender<()>>);

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Ends the whole test binary, saying what it was doing and which FUSE mounts and
/// processes exist, if the guard is still alive after `secs`: a FUSE request that is never
/// answered must fail the run, not stall it.
pub fn watchdog(what: &str, secs: u64) -> Watchdog {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let what = what.to_string();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            rx.recv_timeout(std::time::Duration::from_secs(secs))
        {
            let mounts: String = fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(" - fuse"))
                .map(|l| format!("  {l}\n"))
                .collect();
            let ps = Command::new("ps")
                .args(["-eo", "pid,ppid,stat,wchan:32,args"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let ps: String = ps
                .lines()
                .filter(|l| l.contains("nydus") || l.contains("PID"))
                .map(|l| format!("  {l}\n"))
                .collect();
            eprintln!("{what}: still running after {secs} s; giving up.\nFUSE mounts:\n{mounts}processes:\n{ps}");
            std::process::exit(70);
        }
    });
    Watchdog(Some(tx))
}

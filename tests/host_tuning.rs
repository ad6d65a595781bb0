//! `--cgroup-favordynmods`: the server sets the option on the host's cgroup v2 mount at start
//! and sandboxes work as before. The test puts the mount back as it found it.

mod common;

use common::{Server, ServerOpts};

fn cgroup2_mount() -> Option<(String, bool)> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 3 && f[2] == "cgroup2").then(|| {
            (
                f[1].to_string(),
                f[3].split(',').any(|o| o == "favordynmods"),
            )
        })
    })
}

/// Remounts `target` with exactly `data` as its cgroup options.
fn remount(target: &str, data: &str) {
    let target = std::ffi::CString::new(target).expect("path");
    let data = std::ffi::CString::new(data).expect("data");
    // SAFETY: valid NUL-terminated strings; a remount changes only the mount's options.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT,
            data.as_ptr().cast(),
        )
    };
    assert_eq!(rc, 0, "remount: {}", std::io::Error::last_os_error());
}

#[test]
fn favordynmods_is_set_at_start_and_sandboxes_still_work() {
    let Some((mount, was_on)) = cgroup2_mount() else {
        eprintln!("skipped: this host has no cgroup v2 mount");
        return;
    };
    if was_on {
        remount(&mount, "");
    }
    assert_eq!(cgroup2_mount(), Some((mount.clone(), false)));
    let s = Server::start_with(ServerOpts {
        args: vec![
            "--cgroup-favordynmods".into(),
            "--pool-size".into(),
            "0".into(),
        ],
        ..Default::default()
    });
    let on = cgroup2_mount().is_some_and(|(_, on)| on);
    let id = s.new_sandbox();
    common::assert_contained(&s, &id);
    let out = s.run_ok(&id, "echo ok");
    // Put the host back before asserting, so a failure leaves it as it was.
    if !was_on {
        remount(&mount, "");
    }
    assert!(on, "the server did not set favordynmods on {mount}");
    assert_eq!(out, "ok\n");
}

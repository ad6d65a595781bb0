//! Escape suite: hostile attempts from inside a sandbox to reach the host, the server or a
//! neighbour sandbox. Every attempt must be refused; where the host side is observable the
//! test also checks that the host is unchanged. Each test that runs hostile commands first
//! checks with `assert_contained` that the sandbox really is in its own namespaces.
//!
//! Complements tests/isolation.rs (host dirs, /tmp, /etc writes, /etc/shadow, process
//! visibility, the server port, loopback only, uid maps, unshare -U, mount(2), NoNewPrivs,
//! /dev/mem and block devices, basic files-API symlinks) without repeating it.

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const EPERM: i64 = 1;
const ENOSYS: i64 = 38;
const EMFILE: i64 = 24;
const ENETUNREACH: i64 = 101;

/// A started server and one contained sandbox.
fn contained() -> (Server, String) {
    let server = Server::start();
    let id = server.new_sandbox();
    assert_contained(&server, &id);
    (server, id)
}

/// Runs a python3 script in the sandbox (argv, no shell); asserts the exec answered 200.
#[track_caller]
fn py(server: &Server, id: &str, script: &str) -> ExecResult {
    server.exec_json(id, &json!({ "argv": ["python3", "-c", script] }))
}

/// One dangerous syscall: a name, the x86_64 number, python arguments (ints as c_long,
/// bytes as char*, None as NULL) and the errno seccomp must answer with.
struct Sys {
    name: &'static str,
    nr: u32,
    args: &'static str,
    errno: i64,
}

const fn sys(name: &'static str, nr: u32, args: &'static str, errno: i64) -> Sys {
    Sys {
        name,
        nr,
        args,
        errno,
    }
}

/// Arguments are chosen so that an allowed call would either succeed harmlessly or fail
/// with an errno other than the expected one (EFAULT, EINVAL, EBADF, ENOENT...), so a
/// missing seccomp rule shows up as a wrong errno or a success.
const SYSCALLS: &[Sys] = &[
    sys("bpf(BPF_MAP_CREATE)", 321, "0, None, 0", EPERM),
    sys("keyctl(GET_KEYRING_ID)", 250, "0, -3, 1", EPERM),
    sys(
        "add_key(user)",
        248,
        "b'user', b'sandpit', b'x', 1, -2",
        EPERM,
    ),
    sys(
        "request_key(user)",
        249,
        "b'user', b'sandpit', None, -2",
        EPERM,
    ),
    sys("perf_event_open", 298, "None, 0, -1, -1, 0", EPERM),
    sys("kexec_load", 246, "0, 0, None, 0", EPERM),
    sys("kexec_file_load", 320, "-1, -1, 0, b'', 0", EPERM),
    sys("init_module", 175, "None, 0, b''", EPERM),
    sys("finit_module", 313, "-1, b'', 0", EPERM),
    sys("delete_module", 176, "b'sandpit_nonexistent', 0", EPERM),
    sys("userfaultfd", 323, "0", EPERM),
    sys("io_uring_setup", 425, "1, None", EPERM),
    sys("open_by_handle_at", 304, "-100, None, 0", EPERM),
    sys("reboot(bad magic)", 169, "0, 0, 0, None", EPERM),
    sys("swapon", 167, "b'/tmp/sc-probe/f', 0", EPERM),
    sys("settimeofday(NULL, NULL)", 164, "None, None", EPERM),
    sys("acct(NULL)", 163, "None", EPERM),
    sys("quotactl", 179, "0, None, 0, None", EPERM),
    sys("setns(own netns fd)", 308, "NSFD, 0", EPERM),
    sys("unshare(CLONE_NEWNS)", 272, "0x20000", EPERM),
    sys("unshare(CLONE_NEWNET)", 272, "0x40000000", EPERM),
    sys("unshare(CLONE_NEWPID)", 272, "0x20000000", EPERM),
    sys(
        "pivot_root",
        155,
        "b'/tmp/sc-probe', b'/tmp/sc-probe/old'",
        EPERM,
    ),
    sys(
        "mount(MS_BIND|MS_REC /)",
        165,
        "b'/', b'/tmp/sc-probe', None, 0x5000, None",
        EPERM,
    ),
    sys(
        "umount2(/proc, MNT_DETACH)",
        166,
        "b'/proc/sandpit-none', 2",
        EPERM,
    ),
    sys("fsopen(tmpfs)", 430, "b'tmpfs', 0", EPERM),
    sys("open_tree(/, OPEN_TREE_CLONE)", 428, "-100, b'/', 1", EPERM),
    sys("move_mount", 429, "-1, b'', -1, b'', 0", EPERM),
    sys(
        "clone(CLONE_NEWUSER)",
        56,
        "0x10000000 | 17, 0, None, None, 0",
        EPERM,
    ),
    sys(
        "clone(CLONE_NEWNS)",
        56,
        "0x20000 | 17, 0, None, None, 0",
        EPERM,
    ),
    sys("clone3", 435, "None, 0", ENOSYS),
];

#[test]
fn dangerous_syscalls_are_refused() {
    let (server, id) = contained();
    let mut script = String::from(
        "import ctypes, os\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         libc.syscall.restype = ctypes.c_long\n\
         def sc(nr, *a):\n\
         \x20   a = [ctypes.c_long(x) if isinstance(x, int) else x for x in a]\n\
         \x20   ctypes.set_errno(0)\n\
         \x20   rc = libc.syscall(ctypes.c_long(nr), *a)\n\
         \x20   return rc, ctypes.get_errno()\n\
         os.makedirs('/tmp/sc-probe/old', exist_ok=True)\n\
         open('/tmp/sc-probe/f', 'wb').close()\n\
         NSFD = os.open('/proc/self/ns/net', os.O_RDONLY)\n",
    );
    for (i, s) in SYSCALLS.iter().enumerate() {
        // A successful clone returns 0 in the child: leave it at once.
        script.push_str(&format!(
            "rc, e = sc({nr}, {args})\n\
             if rc == 0 and {clone}: os._exit(0)\n\
             print({i}, rc, e, flush=True)\n",
            nr = s.nr,
            args = s.args,
            clone = if s.nr == 56 || s.nr == 435 {
                "True"
            } else {
                "False"
            },
        ));
    }
    let r = py(&server, &id, &script);
    assert_eq!(r.exit_code, 0, "probe script failed: {r:?}");
    let mut holes = Vec::new();
    let mut seen = 0;
    for line in r.stdout.lines() {
        let f: Vec<i64> = line
            .split_whitespace()
            .map(|x| x.parse().expect("number"))
            .collect();
        let s = &SYSCALLS[f[0] as usize];
        seen += 1;
        if f[1] != -1 || f[2] != s.errno {
            holes.push(format!(
                "{} (nr {}): rc={} errno={} (want -1/{})",
                s.name, s.nr, f[1], f[2], s.errno
            ));
        }
    }
    assert_eq!(seen, SYSCALLS.len(), "not every probe ran: {r:?}");
    assert!(
        holes.is_empty(),
        "syscalls not refused:\n{}",
        holes.join("\n")
    );
    // And nothing got mounted by any of them.
    let mounts = server.run_ok(&id, "cat /proc/self/mountinfo");
    assert!(!mounts.contains("/tmp/sc-probe"), "{mounts}");
}

/// Docker's default capability set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID
/// SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP.
const DOCKER_CAPS: &[u32] = &[0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];

#[test]
fn capabilities_are_reduced() {
    let (server, id) = contained();
    let status = server.run_ok(&id, "cat /proc/self/status");
    let caps = |name: &str| -> u64 {
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {status}"));
        u64::from_str_radix(v.trim(), 16).expect("hex caps")
    };
    let allowed: u64 = DOCKER_CAPS.iter().map(|b| 1u64 << b).sum();
    for field in ["CapEff:", "CapPrm:", "CapBnd:", "CapInh:", "CapAmb:"] {
        let v = caps(field);
        let extra: Vec<u32> = (0..64).filter(|b| (v & !allowed) >> b & 1 == 1).collect();
        assert!(
            extra.is_empty(),
            "{field} {v:016x} has capabilities beyond Docker's set: bits {extra:?}"
        );
    }
    let eff = caps("CapEff:");
    for (bit, name) in [
        (21, "CAP_SYS_ADMIN"),
        (16, "CAP_SYS_MODULE"),
        (19, "CAP_SYS_PTRACE"),
        (12, "CAP_NET_ADMIN"),
        (2, "CAP_DAC_READ_SEARCH"),
        (17, "CAP_SYS_RAWIO"),
        (24, "CAP_SYS_RESOURCE"),
        (25, "CAP_SYS_TIME"),
    ] {
        assert_eq!(eff >> bit & 1, 0, "{name} effective: CapEff {eff:016x}");
    }
    assert_eq!(caps("CapAmb:"), 0, "ambient capabilities set");
    // Dropping is possible, regaining is not: capset back to the bounding set fails for
    // a bit outside it (CAP_SYS_ADMIN).
    let script = "import ctypes\n\
                  libc = ctypes.CDLL(None, use_errno=True)\n\
                  hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)\n\
                  data = (ctypes.c_uint32 * 6)()\n\
                  assert libc.capget(hdr, data) == 0\n\
                  data[0] |= 1 << 21; data[1] |= 1 << 21\n\
                  rc = libc.capset(hdr, data)\n\
                  print(rc, ctypes.get_errno())\n";
    let r = py(&server, &id, script);
    assert_eq!(
        r.stdout.trim(),
        "-1 1",
        "capset(CAP_SYS_ADMIN) not refused: {r:?}"
    );
}

#[test]
fn proc_and_sys_writes_are_refused_and_host_unchanged() {
    let (server, id) = contained();
    let core_before = std::fs::read("/proc/sys/kernel/core_pattern").ok();
    let modprobe_before = std::fs::read("/proc/sys/kernel/modprobe").ok();
    let hostname_before = std::fs::read("/proc/sys/kernel/hostname").ok();
    let attempts = [
        ("sysrq-trigger", "echo h > /proc/sysrq-trigger"),
        ("drop_caches", "echo 1 > /proc/sys/vm/drop_caches"),
        (
            "core_pattern",
            "echo '|/tmp/sandpit-pwn %p' > /proc/sys/kernel/core_pattern",
        ),
        (
            "modprobe path",
            "echo /tmp/sandpit-pwn > /proc/sys/kernel/modprobe",
        ),
        (
            "uevent_helper",
            "test -e /sys/kernel && echo /tmp/sandpit-pwn > /sys/kernel/uevent_helper",
        ),
        (
            "sysfs write",
            "test -e /sys/kernel && echo 1 > /sys/kernel/profiling",
        ),
        ("kcore read", "head -c 16 /proc/kcore | wc -c | grep -qx 16"),
        ("kmsg read", "head -c 1 /proc/kmsg | wc -c | grep -qx 1"),
        (
            "mknod host disk",
            "mknod /tmp/sda b 8 0 && head -c 512 /tmp/sda | wc -c | grep -qx 512",
        ),
        (
            "mknod /dev/mem",
            "mknod /tmp/mem c 1 1 && head -c 16 /tmp/mem | wc -c | grep -qx 16",
        ),
    ];
    let mut holes = Vec::new();
    for (name, cmd) in attempts {
        let r = server.exec(&id, cmd);
        if r.exit_code == 0 {
            holes.push(format!("{name}: `{cmd}` succeeded: {r:?}"));
        }
    }
    assert!(
        holes.is_empty(),
        "attempts not refused:\n{}",
        holes.join("\n")
    );
    // /proc/sys/kernel/hostname may be the sandbox's own UTS namespace: it may change
    // inside, but never on the host.
    let _ = server.exec(
        &id,
        "echo sandpit-pwned > /proc/sys/kernel/hostname; hostname sandpit-pwned2",
    );
    assert_eq!(
        std::fs::read("/proc/sys/kernel/hostname").ok(),
        hostname_before,
        "host hostname changed"
    );
    assert_eq!(
        std::fs::read("/proc/sys/kernel/core_pattern").ok(),
        core_before,
        "host core_pattern changed"
    );
    assert_eq!(
        std::fs::read("/proc/sys/kernel/modprobe").ok(),
        modprobe_before,
        "host modprobe path changed"
    );
}

#[test]
fn namespace_tools_fail() {
    let (server, id) = contained();
    let ns_before = server.run_ok(&id, "readlink /proc/self/ns/mnt /proc/self/ns/net");
    let attempts = [
        ("unshare -r", "unshare -r true"),
        ("unshare -m", "unshare -m true"),
        ("unshare -n", "unshare -n true"),
        (
            "nsenter --target 1",
            "nsenter --target 1 --mount --net true",
        ),
        ("mount --bind", "mkdir -p /tmp/b && mount --bind / /tmp/b"),
        ("mount proc", "mkdir -p /tmp/p && mount -t proc proc /tmp/p"),
        ("umount /proc", "umount -l /proc"),
    ];
    let mut holes = Vec::new();
    for (name, cmd) in attempts {
        let r = server.exec(&id, cmd);
        if r.exit_code == 0 {
            holes.push(format!("{name}: `{cmd}` succeeded: {r:?}"));
        }
    }
    assert!(
        holes.is_empty(),
        "attempts not refused:\n{}",
        holes.join("\n")
    );
    assert_eq!(
        server.run_ok(&id, "readlink /proc/self/ns/mnt /proc/self/ns/net"),
        ns_before
    );
}

/// A root-owned 0700 directory on the host with a secret file in it, removed on drop.
struct Vault {
    dir: tempfile::TempDir,
}

const VAULT_SECRET: &[u8] = b"HOST-VAULT-SECRET-7f3a";

impl Vault {
    fn new() -> Vault {
        let dir = tempfile::Builder::new()
            .prefix("sandpit-vault-")
            .tempdir_in("/tmp")
            .expect("vault dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod vault");
        std::fs::write(dir.path().join("secret.txt"), VAULT_SECRET).expect("write secret");
        Vault { dir }
    }

    fn path(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// Asserts the vault still holds exactly the secret file, unchanged.
    #[track_caller]
    fn assert_untouched(&self, what: &str) {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .expect("read vault")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["secret.txt"], "{what}: host vault changed");
        assert_eq!(
            std::fs::read(self.dir.path().join("secret.txt")).expect("secret"),
            VAULT_SECRET,
            "{what}: host secret changed"
        );
    }
}

#[test]
fn chroot_and_proc_root_tricks_stay_inside() {
    let (server, id) = contained();
    let vault = Vault::new();
    let v = vault.path();
    // The classic chroot escape: chroot into a subdir while holding a dir fd outside it,
    // then walk `..` and chroot again. CAP_SYS_CHROOT is in the set, so this may run; it
    // must only ever reach the sandbox's own root.
    let script = format!(
        "import os\n\
         os.makedirs('/tmp/jail', exist_ok=True)\n\
         fd = os.open('/', os.O_RDONLY)\n\
         try:\n\
         \x20   os.chroot('/tmp/jail'); os.fchdir(fd)\n\
         \x20   for _ in range(64): os.chdir('..')\n\
         \x20   os.chroot('.')\n\
         except OSError as e:\n\
         \x20   print('chroot', e.errno)\n\
         for p in ('{v}/secret.txt', '/work/main/Cargo.toml', '/proc/1/root{v}/secret.txt',\n\
         \x20         '/proc/self/root/../../..{v}/secret.txt'):\n\
         \x20   try:\n\
         \x20       print('READ', p, open(p, 'rb').read())\n\
         \x20   except OSError as e:\n\
         \x20       print('DENIED', p, e.errno)\n"
    );
    let r = py(&server, &id, &script);
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert!(
        !r.stdout.contains("READ"),
        "chroot escape read a host file: {r:?}"
    );
    assert_eq!(r.stdout.matches("DENIED").count(), 4, "{r:?}");

    // Writing through /proc/1/root and /proc/self/root/.. lands inside, not on the host.
    let names: Vec<String> = (0..3)
        .map(|i| unique(&format!("sandpit-procroot{i}")))
        .collect();
    let _ = server.exec(
        &id,
        &format!(
            "echo x > /proc/1/root/tmp/{}; echo x > /proc/self/root/../../tmp/{}; \
             echo x > /proc/1/cwd/../../../tmp/{}; echo x > /proc/1/root{v}/planted",
            names[0], names[1], names[2]
        ),
    );
    for n in &names {
        assert_host_absent(&Path::new("/tmp").join(n), "write through /proc/*/root");
    }
    vault.assert_untouched("write through /proc/1/root");
    // /proc/self/root/../.. is just /.
    assert_eq!(
        server.run_ok(&id, "ls -A /proc/self/root/../../.."),
        server.run_ok(&id, "ls -A /")
    );
}

#[test]
fn files_api_symlink_and_dotdot_never_reach_a_host_file() {
    let (server, id) = contained();
    let vault = Vault::new();
    let v = vault.path();
    server.run_ok(
        &id,
        &format!("ln -s / /workspace/esc && ln -s {v} /workspace/vault && echo d > /workspace/src"),
    );
    let r = server.exec(&id, "cat /workspace/vault/secret.txt");
    assert_ne!(r.exit_code, 0, "exec reads the host vault: {r:?}");

    let dirs = [
        format!("/workspace/esc{v}"),
        "/workspace/vault".to_string(),
        format!("/workspace/../../../..{v}"),
        format!("/workspace/esc/proc/1/root{v}"),
        format!("/workspace/esc/proc/self/root/../..{v}"),
        format!("/workspace/esc/proc/1/cwd/../../..{v}"),
        v.clone(),
    ];
    let secret = String::from_utf8_lossy(VAULT_SECRET).into_owned();
    let mut holes = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let file = format!("{d}/secret.txt");
        let leaked = |r: &Resp| r.text().contains(&secret) || r.text().contains("secret.txt");
        let r = server.request(Method::GET, &Server::files_path(&id, "", &file));
        if r.status < 400 || r.text().contains(&secret) {
            holes.push(format!("GET {file}: {} {}", r.status, r.text()));
        }
        let r = server.request(Method::GET, &Server::files_path(&id, "/stat", &file));
        if r.status < 400 {
            holes.push(format!("stat {file}: {} {}", r.status, r.text()));
        }
        let r = server.request(Method::GET, &Server::files_path(&id, "/list", d));
        if leaked(&r) {
            holes.push(format!("list {d}: {} {}", r.status, r.text()));
        }
        let _ = server.request_bytes(
            Method::PUT,
            &Server::files_path(&id, "", &format!("{d}/planted-{i}")),
            b"x".to_vec(),
        );
        let _ = server.request(Method::DELETE, &Server::files_path(&id, "", &file));
        let _ = server.request_json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/files/mkdir"),
            &json!({ "path": format!("{d}/dir-{i}"), "parents": true }),
        );
        let _ = server.request_json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/files/move"),
            &json!({ "from": "/workspace/src", "to": format!("{d}/moved-{i}") }),
        );
        let stolen = format!("/workspace/stolen-{i}");
        let _ = server.request_json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/files/move"),
            &json!({ "from": file, "to": stolen }),
        );
        let r = server.request(Method::GET, &Server::files_path(&id, "", &stolen));
        if r.text().contains(&secret) {
            holes.push(format!("move {file} -> {stolen} stole the host secret"));
        }
        // The source lives on if the moves were kept inside; put it back otherwise.
        let _ = server.exec(&id, "test -e /workspace/src || echo d > /workspace/src");
        vault.assert_untouched(&format!("file API writes through {d}"));
    }
    // /etc is the host's /etc bound read-only: its shadow file must stay unreadable via
    // a symlinked path too.
    let host_shadow = std::fs::read("/etc/shadow").unwrap_or_default();
    for p in ["/workspace/esc/etc/shadow", "/workspace/../etc/shadow"] {
        let r = server.request(Method::GET, &Server::files_path(&id, "", p));
        if r.status == 200 && !host_shadow.is_empty() && r.body == host_shadow {
            holes.push(format!("GET {p} served the host's /etc/shadow"));
        }
    }
    assert!(holes.is_empty(), "files API escapes:\n{}", holes.join("\n"));
    vault.assert_untouched("files API");
}

#[test]
fn agent_binary_is_out_of_reach() {
    let (server, id) = contained();
    let host_before = std::fs::read(BIN).expect("read server binary");
    // The agent runs from a descriptor of the host's binary: no path inside names it.
    assert_eq!(
        server.run_ok(
            &id,
            "test -e /.sandpit/sandpit && echo present || echo absent"
        ),
        "absent\n"
    );
    let attempts = [
        (
            "read /proc/1/exe",
            "python3 -c \"open('/proc/1/exe', 'rb').read(1)\"",
        ),
        (
            "write /proc/1/exe",
            "python3 -c \"open('/proc/1/exe', 'r+b').write(b'x')\"",
        ),
        ("readlink /proc/1/exe", "readlink -e /proc/1/exe"),
        ("list /proc/1/root", "ls /proc/1/root/"),
        ("list /proc/1/map_files", "ls /proc/1/map_files/"),
    ];
    let mut holes = Vec::new();
    for (name, cmd) in attempts {
        let r = server.exec(&id, cmd);
        if r.exit_code == 0 {
            holes.push(format!("{name}: `{cmd}` succeeded: {r:?}"));
        }
    }
    assert!(
        holes.is_empty(),
        "agent binary attempts:\n{}",
        holes.join("\n")
    );
    assert!(
        std::fs::read(BIN).expect("read server binary") == host_before,
        "the host's sandpit binary changed"
    );
    // And the sandbox still works (the agent was not disturbed).
    assert_eq!(server.run_ok(&id, "echo ok"), "ok\n");
}

#[test]
fn setuid_binaries_do_not_raise_privileges() {
    let (server, id) = contained();
    // A setuid-root copy of `id`, run by an unprivileged user inside, stays that user.
    let script = "import os, shutil, subprocess\n\
                  shutil.copy('/usr/bin/id', '/tmp/suid-id')\n\
                  os.chmod('/tmp/suid-id', 0o4755)\n\
                  def drop():\n\
                  \x20   os.setgroups([]); os.setgid(65534); os.setuid(65534)\n\
                  out = subprocess.run(['/tmp/suid-id', '-u'], preexec_fn=drop,\n\
                  \x20   capture_output=True, text=True).stdout.strip()\n\
                  print('uid', out)\n\
                  ok = [p for p in ('/usr/bin/su', '/usr/bin/sudo') if os.path.exists(p)]\n\
                  for p in ok:\n\
                  \x20   r = subprocess.run([p, '-c', 'id -u'] if p.endswith('su') else [p, '-n', 'id', '-u'],\n\
                  \x20       preexec_fn=drop, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=10)\n\
                  \x20   print('via', p, r.returncode, repr(r.stdout.strip()))\n";
    let r = py(&server, &id, script);
    assert_eq!(r.exit_code, 0, "{r:?}");
    let mut lines = r.stdout.lines();
    assert_eq!(
        lines.next(),
        Some("uid 65534"),
        "setuid raised privileges: {r:?}"
    );
    for l in lines {
        // su/sudo must fail (or at best run as the same unprivileged user).
        assert!(
            !l.ends_with(" 0 '0'"),
            "setuid su/sudo gave root to uid 65534: {l}"
        );
    }
}

#[test]
fn cannot_kill_a_neighbour_process() {
    let server = Server::start();
    let a = server.new_sandbox();
    let b = server.new_sandbox();
    assert_contained(&server, &a);
    assert_contained(&server, &b);
    server.run_ok(&b, "nohup sleep 7771 >/dev/null 2>&1 &");
    server.wait_for_process(&b, "sleep 7771");
    let host_pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x007771\x00")
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    assert_eq!(host_pids.len(), 1, "host pid of b's sleep: {host_pids:?}");
    let host_pid = host_pids[0];
    let script = format!(
        "import os\n\
         me = os.getpid()\n\
         hit = 0\n\
         for pid in list(range(2, 32769)) + [{host_pid}]:\n\
         \x20   if pid == me: continue\n\
         \x20   try:\n\
         \x20       os.kill(pid, 9); hit += 1\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         print('killed', hit)\n"
    );
    // The exec may kill its own helpers; any HTTP answer is fine.
    let r = server.exec_resp(&a, &json!({ "argv": ["python3", "-c", script] }));
    assert!(r.status < 600, "{r:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        Path::new(&format!("/proc/{host_pid}")).exists(),
        "b's sleep (host pid {host_pid}) was killed from a"
    );
    server.wait_for_process(&b, "sleep 7771");
    assert_eq!(server.run_ok(&b, "echo alive"), "alive\n");
    assert_eq!(server.run_ok(&a, "echo alive"), "alive\n");
}

#[test]
fn host_network_is_unreachable() {
    let (server, id) = contained();
    // TCP listeners on the host: loopback and every address.
    let lo = std::net::TcpListener::bind("127.0.0.1:0").expect("bind lo");
    let any = std::net::TcpListener::bind("0.0.0.0:0").expect("bind any");
    lo.set_nonblocking(true).unwrap();
    any.set_nonblocking(true).unwrap();
    let lo_port = lo.local_addr().unwrap().port();
    let any_port = any.local_addr().unwrap().port();
    // The host's own non-loopback address, if it has one (no packet is sent).
    let host_ip = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip().to_string())
        .ok()
        .filter(|ip| ip != "0.0.0.0");
    // An abstract unix socket is per network namespace.
    let abs_name = unique("sandpit-abs");
    let abs = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abs_name.as_bytes())
            .expect("abstract addr");
        std::os::unix::net::UnixListener::bind_addr(&addr).expect("bind abstract")
    };
    abs.set_nonblocking(true).unwrap();

    let mut targets = vec![
        (
            "host 127.0.0.1 listener".to_string(),
            "127.0.0.1".to_string(),
            lo_port,
        ),
        (
            "host 0.0.0.0 listener via lo".to_string(),
            "127.0.0.1".to_string(),
            any_port,
        ),
    ];
    if let Some(ip) = &host_ip {
        targets.push((format!("host address {ip}"), ip.clone(), any_port));
    }
    let mut script = String::from(
        "import socket, errno\n\
         def tcp(host, port):\n\
         \x20   s = socket.socket(); s.settimeout(3)\n\
         \x20   try:\n\
         \x20       s.connect((host, port)); return 'CONNECTED'\n\
         \x20   except OSError as e:\n\
         \x20       return 'FAILED %s' % e.errno\n",
    );
    for (name, host, port) in &targets {
        script.push_str(&format!("print({name:?}, '|', tcp({host:?}, {port}))\n"));
    }
    for ip in ["10.0.0.1", "169.254.169.254", "8.8.8.8"] {
        script.push_str(&format!("print('route {ip}', '|', tcp('{ip}', 80))\n"));
    }
    script.push_str(&format!(
        "u = socket.socket(socket.AF_UNIX)\n\
         try:\n\
         \x20   u.connect('\\0{abs_name}'); print('host abstract socket | CONNECTED')\n\
         except OSError as e:\n\
         \x20   print('host abstract socket | FAILED %s' % e.errno)\n"
    ));
    let r = py(&server, &id, &script);
    assert_eq!(r.exit_code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), targets.len() + 4, "{r:?}");
    for l in &lines {
        assert!(l.contains("| FAILED"), "reached the host: {l}\n{r:?}");
        if l.starts_with("route ") {
            assert!(
                l.ends_with(&format!("FAILED {ENETUNREACH}")),
                "not ENETUNREACH: {l}"
            );
        }
    }
    // Nothing knocked on the host listeners either.
    assert!(
        lo.accept().is_err(),
        "host loopback listener got a connection"
    );
    assert!(any.accept().is_err(), "host listener got a connection");
    assert!(
        abs.accept().is_err(),
        "host abstract socket got a connection"
    );
}

#[test]
fn server_token_is_not_visible_inside() {
    let token = format!("tok-{}", unique("secret"));
    let server = Server::start_with(ServerOpts {
        token: Some(token.clone()),
        ..ServerOpts::default()
    });
    let id = server.new_sandbox();
    assert_contained(&server, &id);
    let r = server.exec(
        &id,
        "cat /proc/*/environ /proc/*/cmdline 2>/dev/null | tr '\\0' '\\n'; env",
    );
    assert!(
        !r.stdout.contains(&token),
        "the server's auth token is visible inside the sandbox"
    );
    let r = server.exec(
        &id,
        &format!("grep -rsl '{token}' /etc /tmp /workspace /.sandpit /run 2>/dev/null"),
    );
    assert_eq!(r.stdout, "", "token found in files inside: {r:?}");
}

#[test]
fn fd_exhaustion_is_bounded_and_neighbour_works() {
    let server = Server::start();
    let id = server.new_sandbox();
    let neighbour = server.new_sandbox();
    assert_contained(&server, &id);
    let script = "import os, resource\n\
                  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n\
                  print('limit', soft, hard)\n\
                  try:\n\
                  \x20   resource.setrlimit(resource.RLIMIT_NOFILE, (1 << 30, 1 << 30)); print('raise ok')\n\
                  except (ValueError, OSError) as e:\n\
                  \x20   print('raise refused')\n\
                  try:\n\
                  \x20   resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))\n\
                  except (ValueError, OSError):\n\
                  \x20   pass\n\
                  fds = []\n\
                  err = 0\n\
                  for _ in range(100000):\n\
                  \x20   try:\n\
                  \x20       fds.append(os.open('/dev/null', os.O_RDONLY))\n\
                  \x20   except OSError as e:\n\
                  \x20       err = e.errno; break\n\
                  print('opened', len(fds), err)\n";
    let r = py(&server, &id, script);
    assert_eq!(r.exit_code, 0, "{r:?}");
    let out: Vec<&str> = r.stdout.lines().collect();
    let limit: Vec<i64> = out[0]
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(
        limit[1] > 0 && limit[1] <= 1 << 20,
        "RLIMIT_NOFILE hard limit not finite/bounded: {limit:?}"
    );
    assert_eq!(
        out[1], "raise refused",
        "raised RLIMIT_NOFILE to 2^30: {r:?}"
    );
    let opened: Vec<i64> = out[2]
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(
        opened[1], EMFILE,
        "opening files ended without EMFILE: {r:?}"
    );
    assert!(opened[0] < 100_000, "{r:?}");
    assert_eq!(server.run_ok(&neighbour, "echo fine"), "fine\n");
    assert_eq!(server.run_ok(&id, "echo fine"), "fine\n");
}

/// Sends `rb` and returns the status, or `None` when the server closed the connection
/// without an answer (acceptable for garbage; a crash is not, checked via /health).
fn status_of(rb: reqwest::blocking::RequestBuilder) -> Option<u16> {
    rb.send().ok().map(|r| r.status().as_u16())
}

#[track_caller]
fn assert_healthy(server: &Server, after: &str) {
    let r = server.request(Method::GET, "/health");
    assert_eq!(
        r.status,
        200,
        "server unhealthy after {after}: {}",
        r.text()
    );
}

#[test]
fn malformed_and_huge_requests_are_refused() {
    let (server, id) = contained();
    let exec = format!("/v1/sandboxes/{id}/exec");
    let mut bad = Vec::new();

    // A 20 MiB path in the query string.
    let huge = "a".repeat(20 << 20);
    let s = status_of(server.req(
        Method::GET,
        &format!("/v1/sandboxes/{id}/files?path=/workspace/{huge}"),
    ));
    if !matches!(s, None | Some(400..=499)) {
        bad.push(format!("20 MiB query: {s:?}"));
    }
    assert_healthy(&server, "a 20 MiB query");

    // A NUL byte in a path.
    for route in ["", "/stat", "/list"] {
        let s = status_of(server.req(
            Method::GET,
            &format!("/v1/sandboxes/{id}/files{route}?path=/workspace/a%00/../../etc/passwd"),
        ));
        if s != Some(400) {
            bad.push(format!("%00 in files{route} path: {s:?}"));
        }
    }
    let s = status_of(
        server
            .req(
                Method::PUT,
                &format!("/v1/sandboxes/{id}/files?path=/tmp/x%00y"),
            )
            .body("z"),
    );
    if s != Some(400) {
        bad.push(format!("%00 in PUT path: {s:?}"));
    }

    // Invalid UTF-8 inside JSON.
    let s = status_of(
        server
            .req(Method::POST, &exec)
            .header("content-type", "application/json")
            .body(b"{\"command\": \"echo \xff\xfe\"}".to_vec()),
    );
    if !matches!(s, Some(400..=499)) {
        bad.push(format!("invalid UTF-8 JSON: {s:?}"));
    }

    // JSON nested 100k levels deep, to exec and to sandbox creation.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_obj = format!("{{\"command\": {deep}}}");
    for (path, body) in [(exec.as_str(), &deep_obj), ("/v1/sandboxes", &deep)] {
        let s = status_of(
            server
                .req(Method::POST, path)
                .header("content-type", "application/json")
                .body(body.clone()),
        );
        if !matches!(s, Some(400..=499)) {
            bad.push(format!("100k-deep JSON to {path}: {s:?}"));
        }
        assert_healthy(&server, "deeply nested JSON");
    }
    assert!(
        bad.is_empty(),
        "malformed requests not refused:\n{}",
        bad.join("\n")
    );
    assert_healthy(&server, "malformed requests");
    assert_eq!(server.run_ok(&id, "echo still"), "still\n");
}

#[test]
fn agent_host_fds_cannot_be_reopened_through_proc() {
    let (server, id) = contained();
    // The agent (pid 1 inside) keeps host files open, e.g. its log in the server's data
    // dir. Re-opening them through the /proc magic links must be refused.
    let links = server.run_ok(
        &id,
        "for f in /proc/1/fd/*; do echo \"$f $(readlink $f)\"; done",
    );
    let host_files: Vec<(String, String)> = links
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, target)| target.starts_with('/') && !target.starts_with("/dev/"))
        .map(|(fd, target)| (fd.to_string(), target.to_string()))
        .collect();
    assert!(!links.is_empty(), "no fds listed for pid 1");
    let marker = unique("SANDPIT-INJECTED");
    let mut holes = Vec::new();
    for (fd, target) in &host_files {
        for (what, cmd) in [
            ("append", format!("echo {marker} >> {fd}")),
            ("read", format!("head -c 1 {fd} > /dev/null")),
            ("truncate", format!(": > {fd}")),
            ("list parent", format!("ls {fd}/..")),
        ] {
            let r = server.exec(&id, &cmd);
            if r.exit_code == 0 {
                holes.push(format!("{what} {fd} -> {target}: `{cmd}` succeeded: {r:?}"));
            }
        }
        // Where the target is a host path, it must not carry the marker.
        if let Ok(text) = std::fs::read(target) {
            if String::from_utf8_lossy(&text).contains(&marker) {
                holes.push(format!("host file {target} was written from inside"));
            }
        }
    }
    assert!(
        holes.is_empty(),
        "agent fds reopened:\n{}",
        holes.join("\n")
    );
    assert_eq!(server.run_ok(&id, "echo ok"), "ok\n");
}

#[test]
fn child_resource_ids_cannot_traverse_host_paths() {
    let (server, id) = contained();
    let mut bad = Vec::new();
    let mut names = Vec::new();
    for (route, extra) in [
        ("sessions", json!({})),
        ("processes", json!({ "command": "echo planted" })),
        ("contexts", json!({ "language": "python" })),
    ] {
        let name = unique(&format!("sandpit-{route}"));
        for (i, rid) in [
            format!("../../../../../../tmp/{name}-0"),
            format!("/tmp/{name}-1"),
            format!("a/../../../../../../../../tmp/{name}-2"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut body = extra.clone();
            body["id"] = json!(rid);
            let r =
                server.request_json(Method::POST, &format!("/v1/sandboxes/{id}/{route}"), &body);
            if !(400..500).contains(&r.status) {
                bad.push(format!("{route} id {rid:?}: {} {}", r.status, r.text()));
            }
            names.push(format!("{name}-{i}"));
        }
    }
    // Encoded traversal in the sandbox id of the URL.
    for path in [
        "/v1/sandboxes/..%2F..%2F..%2Ftmp/exec",
        "/v1/sandboxes/%2e%2e/exec",
    ] {
        let r = server.request_json(Method::POST, path, &json!({ "command": "echo hi" }));
        if !(400..500).contains(&r.status) {
            bad.push(format!("POST {path}: {} {}", r.status, r.text()));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    for n in &names {
        let p = Path::new("/tmp").join(n);
        let exists = std::fs::symlink_metadata(&p).is_ok();
        let _ = std::fs::remove_dir_all(&p);
        let _ = std::fs::remove_file(&p);
        if exists {
            bad.push(format!("{} appeared on the host", p.display()));
        }
    }
    assert!(
        bad.is_empty(),
        "id traversal not refused:\n{}",
        bad.join("\n")
    );
    assert_eq!(server.run_ok(&id, "echo ok"), "ok\n");
}

/// Paths that name the host vault through a symlink, `..` or `/proc/*/root` from inside a
/// sandbox where `/workspace/esc` links to `/` and `/workspace/vault` to the vault's path.
fn escape_paths(v: &str) -> Vec<String> {
    vec![
        format!("/workspace/esc{v}/secret.txt"),
        "/workspace/vault/secret.txt".to_string(),
        format!("/workspace/../../../..{v}/secret.txt"),
        format!("/workspace/esc/proc/1/root{v}/secret.txt"),
        format!("/workspace/esc/proc/self/root/../..{v}/secret.txt"),
        format!("{v}/secret.txt"),
    ]
}

#[test]
fn dialect_file_routes_never_reach_a_host_file() {
    let (server, id) = contained();
    let vault = Vault::new();
    let v = vault.path();
    server.run_ok(
        &id,
        &format!("ln -s / /workspace/esc && ln -s {v} /workspace/vault && echo inside > /workspace/own.txt"),
    );
    let secret = String::from_utf8_lossy(VAULT_SECRET).into_owned();
    let artifact = |method: Method, p: &str, body: Option<serde_json::Value>| {
        let mut rb = server
            .req(method, &format!("/compat/artifact{p}"))
            .header("x-sandbox-id", &id);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        server.send(rb)
    };
    // Each dialect reads a file of the sandbox itself: the routes work, so a refusal below
    // is the path check and not a broken route.
    let rlm_read = |p: &str| {
        server.request(
            Method::GET,
            &format!("/compat/rlm/sandbox/read?sandbox_id={id}&path={}", enc(p)),
        )
    };
    // acontext answers base64 whatever is asked: decoded here, so the checks below see text.
    let acontext_download = |p: &str| {
        use base64::Engine;
        let r = server.request_json(
            Method::POST,
            &format!("/compat/acontext/sandbox/{id}/download"),
            &json!({"file_path": p, "encoding": "base64"}),
        );
        let content = if r.status == 200 {
            r.json()["content"].as_str().map(|c| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(c)
                    .unwrap_or_default();
                String::from_utf8_lossy(&bytes).into_owned()
            })
        } else {
            None
        };
        match content {
            Some(text) => Resp {
                status: r.status,
                body: text.into_bytes(),
                ..r
            },
            None => r,
        }
    };
    let artifact_read = |p: &str| artifact(Method::GET, &format!("/file?path={}", enc(p)), None);
    for (dialect, r) in [
        ("rlm", rlm_read("/workspace/own.txt")),
        ("acontext", acontext_download("/workspace/own.txt")),
        ("artifact", artifact_read("/workspace/own.txt")),
    ] {
        assert!(
            r.status == 200 && r.text().contains("inside"),
            "{dialect} cannot read the sandbox's own file: {} {}",
            r.status,
            r.text()
        );
    }
    let mut holes = Vec::new();
    for (i, file) in escape_paths(&v).iter().enumerate() {
        for (dialect, r) in [
            ("rlm read", rlm_read(file)),
            ("acontext download", acontext_download(file)),
            ("artifact GET /file", artifact_read(file)),
            (
                "kapin ls",
                server.request(
                    Method::GET,
                    &format!(
                        "/compat/kapin/sandboxes/{id}/ls?path={}",
                        enc(file.trim_end_matches("/secret.txt"))
                    ),
                ),
            ),
        ] {
            // An error may echo the path asked for; only a listing names the file itself.
            let listed = dialect == "kapin ls" && r.text().contains("secret.txt");
            if r.text().contains(&secret) || listed {
                holes.push(format!("{dialect} {file}: {} {}", r.status, r.text()));
            }
        }
        let planted = file.replace("secret.txt", &format!("planted-{i}"));
        let _ = server.request_json(
            Method::POST,
            "/compat/rlm/sandbox/write",
            &json!({"sandbox_id": id, "path": planted, "content": "x"}),
        );
        let _ = server.request_json(
            Method::POST,
            &format!("/compat/acontext/sandbox/{id}/upload"),
            &json!({"file_path": planted, "content": "x", "encoding": "utf-8"}),
        );
        let _ = artifact(
            Method::PUT,
            "/file",
            Some(json!({"path": planted, "content": "x"})),
        );
        let _ = artifact(Method::DELETE, &format!("/file?path={}", enc(file)), None);
        let _ = artifact(
            Method::POST,
            "/mkdir",
            Some(json!({"path": file.replace("secret.txt", &format!("dir-{i}"))})),
        );
        let _ = artifact(
            Method::POST,
            "/move",
            Some(json!({"from": "/workspace/own.txt", "to": planted})),
        );
        let stolen = format!("/workspace/stolen-{i}");
        let _ = artifact(
            Method::POST,
            "/rename",
            Some(json!({"oldPath": file, "newPath": stolen})),
        );
        let _ = artifact(
            Method::POST,
            "/move",
            Some(json!({"from": file, "to": stolen})),
        );
        if server
            .exec(&id, &format!("cat {stolen} 2>/dev/null"))
            .stdout
            .contains(&secret)
        {
            holes.push(format!(
                "artifact move/rename of {file} stole the host secret"
            ));
        }
        let _ = server.exec(
            &id,
            "test -e /workspace/own.txt || echo inside > /workspace/own.txt",
        );
        vault.assert_untouched(&format!("dialect file routes through {file}"));
    }
    assert!(
        holes.is_empty(),
        "dialect file escapes:\n{}",
        holes.join("\n")
    );
}

#[test]
fn snapshot_and_restore_paths_stay_inside() {
    let (server, id) = contained();
    let vault = Vault::new();
    let v = vault.path();
    server.run_ok(
        &id,
        &format!("ln -s / /workspace/esc && ln -s {v} /workspace/vault && mkdir -p /workspace/keep && echo kept > /workspace/keep/a"),
    );
    let secret = String::from_utf8_lossy(VAULT_SECRET).into_owned();
    let mut holes = Vec::new();
    let dirs = [
        format!("/workspace/esc{v}"),
        "/workspace/vault".to_string(),
        format!("/workspace/../../..{v}"),
        format!("/workspace/esc/proc/1/root{v}"),
        v.clone(),
    ];
    for d in &dirs {
        // A snapshot of a path that names the host vault archives the sandbox's view of
        // it (nothing, or an error), never the host's files; restoring it writes nothing
        // on the host.
        let r = server.request_json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/snapshots"),
            &json!({"path": d}),
        );
        if r.status >= 500 {
            holes.push(format!("snapshot of {d}: {} {}", r.status, r.text()));
        }
        if r.status == 201 || r.status == 200 {
            let snap = r.json()["id"].as_str().unwrap_or_default().to_string();
            let r = server.request_json(
                Method::POST,
                &format!("/v1/sandboxes/{id}/restore"),
                &json!({"snapshot": snap}),
            );
            if r.status >= 500 {
                holes.push(format!("restore of {d}: {} {}", r.status, r.text()));
            }
        }
        vault.assert_untouched(&format!("snapshot/restore of {d}"));
    }
    // A snapshot of the whole sandbox, restored into a second one: the symlinks come back
    // as symlinks, the host secret is in neither.
    let r = server.request_json(
        Method::POST,
        &format!("/v1/sandboxes/{id}/snapshots"),
        &json!({}),
    );
    r.expect(201);
    let snap = r.json()["id"].as_str().unwrap_or_default().to_string();
    let other = server.new_sandbox();
    server
        .request_json(
            Method::POST,
            &format!("/v1/sandboxes/{other}/restore"),
            &json!({"snapshot": snap, "from_sandbox": id}),
        )
        .expect(200);
    assert_eq!(server.run_ok(&other, "cat /workspace/keep/a"), "kept\n");
    let found = server.exec(
        &other,
        &format!("grep -rs {secret} /workspace /tmp /root 2>/dev/null; readlink /workspace/vault"),
    );
    if found.stdout.contains(&secret) {
        holes.push(format!("restored sandbox holds the host secret: {found:?}"));
    }
    assert_eq!(
        found.stdout.trim(),
        v,
        "the symlink is restored as a symlink"
    );
    assert!(holes.is_empty(), "snapshot escapes:\n{}", holes.join("\n"));
    vault.assert_untouched("snapshot and restore");
}

#[test]
fn ptrace_and_process_memory_of_a_neighbour_are_unreachable() {
    let server = Server::start();
    let a = server.new_sandbox();
    let b = server.new_sandbox();
    assert_contained(&server, &a);
    assert_contained(&server, &b);
    server.run_ok(&b, "nohup sleep 7772 >/dev/null 2>&1 &");
    server.wait_for_process(&b, "sleep 7772");
    let host_pid: u32 = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x007772\x00"))
        .and_then(|e| e.file_name().to_str()?.parse().ok())
        .expect("host pid of b's sleep");
    // ptrace(PTRACE_ATTACH), PTRACE_SEIZE, process_vm_readv, pidfd_open and kill(0) on the
    // neighbour's host pid, and on the sandbox's own init (the agent) with PTRACE_ATTACH.
    let script = format!(
        "import ctypes, os\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         libc.syscall.restype = ctypes.c_long\n\
         def call(nr, *args):\n\
         \x20   r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])\n\
         \x20   return 0 if r >= 0 else ctypes.get_errno()\n\
         buf = ctypes.create_string_buffer(16)\n\
         iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 16)\n\
         p = {host_pid}\n\
         print('attach', call(101, 16, p, 0, 0))\n\
         print('seize', call(101, 0x4206, p, 0, 0))\n\
         print('vm_readv', call(310, p, ctypes.addressof(iov), 1, ctypes.addressof(iov), 1, 0))\n\
         print('pidfd_open', call(434, p, 0))\n\
         try:\n\
         \x20   os.kill(p, 0); print('kill', 0)\n\
         except OSError as e:\n\
         \x20   print('kill', e.errno)\n\
         print('proc', int(os.path.exists('/proc/%d' % p)))\n"
    );
    let r = py(&server, &a, &script);
    let out = r.stdout.clone();
    let results: std::collections::BTreeMap<&str, i64> = out
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k, v.trim().parse().ok()?))
        })
        .collect();
    assert_eq!(results.len(), 6, "unexpected output: {r:?}");
    // The pid either does not exist in a's pid namespace (ESRCH = 3) or, should a's own
    // process have the same number, is a's own, never b's.
    let own = server.exec(&a, &format!("test -e /proc/{host_pid}"));
    if own.exit_code != 0 {
        for (k, v) in &results {
            let want = if *k == "proc" { 0 } else { 3 };
            assert_eq!(*v, want, "{k} on b's host pid {host_pid} from a: {r:?}");
        }
    }
    assert!(
        Path::new(&format!("/proc/{host_pid}/status")).exists(),
        "b's sleep died"
    );
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).unwrap_or_default();
    let tracer = status
        .lines()
        .find(|l| l.starts_with("TracerPid:"))
        .unwrap_or("TracerPid: ?");
    assert_eq!(
        tracer.split_whitespace().nth(1),
        Some("0"),
        "b's sleep is traced"
    );
    assert_eq!(server.run_ok(&b, "echo alive"), "alive\n");
}

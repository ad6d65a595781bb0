//! Where a sandbox's cgroups are on the host: `sandpit-<instance>/<name>` in every hierarchy
//! (v1: one per controller, v2: one), where `<name>` is the sandbox's id or, for one handed
//! over from the warm pool, the pooled id kept in its `cgroup-name` file. The server's own
//! cgroup may be several levels deep (this host's v1 memory hierarchy nests it under
//! `process_api/<hash>/`), so the tree is walked, not just its first level.

use std::path::{Path, PathBuf};

use super::Server;

/// The name of the sandbox's cgroup directories.
pub fn cgroup_name(server: &Server, id: &str) -> String {
    std::fs::read_to_string(
        server
            .data_dir()
            .join("sandboxes")
            .join(id)
            .join("cgroup-name"),
    )
    .map(|n| n.trim().to_string())
    .unwrap_or_else(|_| id.to_string())
}

/// The sandbox's cgroup directories on the host (empty when it has none, e.g. asleep).
pub fn sandbox_dirs(server: &Server, id: &str) -> Vec<PathBuf> {
    let name = cgroup_name(server, id);
    instance_dirs_holding(&name)
        .into_iter()
        .map(|d| d.join(&name))
        .collect()
}

/// The `sandpit-*` instance directories that hold a cgroup called `name`.
pub fn instance_dirs_holding(name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), 0, name, &mut out);
    out.sort();
    out
}

fn walk(dir: &Path, depth: usize, name: &str, out: &mut Vec<PathBuf>) {
    if depth > 6 {
        return;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = e.path();
        if e.file_name().to_string_lossy().starts_with("sandpit-") {
            if path.join(name).is_dir() {
                out.push(path);
            }
        } else {
            walk(&path, depth + 1, name, out);
        }
    }
}

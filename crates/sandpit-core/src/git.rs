//! Git checkouts inside a sandbox: `git clone`, or fetch and fast-forward when the target is a
//! repository already. git runs in the sandbox through the agent with an argv (no shell text
//! built from the request). A token reaches git only through its environment, read by a
//! credential helper whose text is fixed, so it is in no argv, no `.git/config` and no
//! answer or log line (output is redacted all the same).

use std::collections::BTreeMap;

use crate::model::{ExecRequest, ExecResult, GitCheckout, GitClone};
use crate::{CoreError, SandboxManager};

const TOKEN_VAR: &str = "SANDPIT_GIT_TOKEN";
const USER_VAR: &str = "SANDPIT_GIT_USERNAME";
/// Answers git's `get` with the environment's credentials; `store`/`erase` are ignored.
const HELPER: &str = "!f() { test \"$1\" = get || exit 0; echo \"username=${SANDPIT_GIT_USERNAME}\"; echo \"password=${SANDPIT_GIT_TOKEN}\"; }; f";
const SCHEMES: &[&str] = &["https", "http", "git", "ssh"];

/// A request's URL without credentials, and the credentials it carried.
#[derive(Debug, PartialEq)]
struct Remote {
    url: String,
    username: Option<String>,
    token: Option<String>,
}

fn parse_url(raw: &str) -> Result<Remote, CoreError> {
    let bad = |why: String| CoreError::BadRequest(format!("url: {why}"));
    if raw.is_empty() || raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad(
            "must be a URL without spaces or control characters".into()
        ));
    }
    let Some((scheme, rest)) = raw.split_once("://") else {
        return Err(bad(format!(
            "use one of the schemes {} (no local paths, file:// or ext::)",
            SCHEMES.join(", ")
        )));
    };
    if !SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
        return Err(bad(format!(
            "scheme '{scheme}' is not allowed; use one of {}",
            SCHEMES.join(", ")
        )));
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if host.is_empty() || host.starts_with('-') {
        return Err(bad("has no host".into()));
    }
    let (username, token) = match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((name, pass)) => (Some(name.to_string()), Some(pass.to_string())),
            // `https://TOKEN@host/...`, as GitHub documents it.
            None if scheme.starts_with("http") => (None, Some(u.to_string())),
            None => (Some(u.to_string()), None),
        },
    };
    Ok(Remote {
        url: format!("{scheme}://{host}{path}"),
        username: username.filter(|s| !s.is_empty()),
        token: token.filter(|s| !s.is_empty()),
    })
}

/// `/workspace/<last path segment without .git>`.
fn default_dir(url: &str) -> String {
    let name = url
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .unwrap_or("")
        .trim_end_matches(".git");
    let name = if name.is_empty() || name == "." || name == ".." {
        "repo"
    } else {
        name
    };
    format!("/workspace/{name}")
}

/// The environment that hands git `token` (with `username`) through a credential helper of
/// fixed text, after dropping any helper configured in the sandbox, so the token is never in
/// an argv, a URL or `.git/config`. Without a token, only the sandbox's helpers are dropped.
/// Prompts are off either way.
pub fn credential_env(token: Option<&str>, username: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([
        ("GIT_TERMINAL_PROMPT".to_string(), "0".to_string()),
        ("GIT_ASKPASS".to_string(), "/bin/false".to_string()),
        ("SSH_ASKPASS".to_string(), "/bin/false".to_string()),
        ("GIT_ALLOW_PROTOCOL".to_string(), SCHEMES.join(":")),
        ("GIT_CONFIG_COUNT".to_string(), "1".to_string()),
        (
            "GIT_CONFIG_KEY_0".to_string(),
            "credential.helper".to_string(),
        ),
        ("GIT_CONFIG_VALUE_0".to_string(), String::new()),
    ]);
    if let Some(t) = token {
        env.extend([
            ("GIT_CONFIG_COUNT".to_string(), "2".to_string()),
            (
                "GIT_CONFIG_KEY_1".to_string(),
                "credential.helper".to_string(),
            ),
            ("GIT_CONFIG_VALUE_1".to_string(), HELPER.to_string()),
            (TOKEN_VAR.to_string(), t.to_string()),
            (USER_VAR.to_string(), username.to_string()),
        ]);
    }
    env
}

fn redact(text: &str, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|s| s.len() >= 3)
        .fold(text.to_string(), |t, s| t.replace(s, "***"))
}

impl SandboxManager {
    /// Clones `req.url` into `req.dir`, or fetches and fast-forwards when `dir` already holds a
    /// repository.
    pub async fn git_clone(&self, id: &str, req: GitClone) -> Result<GitCheckout, CoreError> {
        let remote = parse_url(req.url.trim())?;
        let token = req.token.filter(|t| !t.is_empty()).or(remote.token);
        let username = req
            .username
            .filter(|u| !u.is_empty())
            .or(remote.username)
            .unwrap_or_else(|| "x-access-token".into());
        if let Some(b) = &req.branch {
            if b.is_empty() || b.starts_with('-') || b.chars().any(|c| c.is_control() || c == ' ') {
                return Err(CoreError::BadRequest(format!("invalid branch '{b}'")));
            }
        }
        if req.depth == Some(0) {
            return Err(CoreError::BadRequest("depth must be at least 1".into()));
        }
        let dir = req.dir.unwrap_or_else(|| default_dir(&remote.url));
        if !dir.starts_with('/') || dir.contains('\0') {
            return Err(CoreError::BadRequest(format!(
                "dir '{dir}' must be an absolute path"
            )));
        }
        let secrets: Vec<&str> = token.iter().map(String::as_str).collect();
        let env = credential_env(token.as_deref(), &username);
        let run = |argv: Vec<String>| {
            let env = env.clone();
            async move {
                self.exec(
                    id,
                    ExecRequest {
                        argv: Some(argv),
                        cwd: Some("/".into()),
                        env,
                        timeout_ms: req.timeout_ms,
                        ..ExecRequest::default()
                    },
                )
                .await
            }
        };
        let exists = self.stat(id, &format!("{dir}/.git")).await.is_ok();
        let depth: Vec<String> = req
            .depth
            .map(|d| vec![format!("--depth={d}")])
            .unwrap_or_default();
        let action = if exists {
            // No --depth: a shallow fetch would move the shallow boundary past HEAD and the
            // fast-forward would see unrelated histories. Every new commit is fetched.
            let mut fetch: Vec<String> =
                vec!["git".into(), "-C".into(), dir.clone(), "fetch".into()];
            fetch.extend(["--".into(), remote.url.clone()]);
            // No branch: the one checked out (the remote's HEAD when detached).
            let branch = match req.branch.clone() {
                Some(b) => Some(b),
                None => {
                    let current = ["git", "-C", &dir, "rev-parse", "--abbrev-ref", "HEAD"];
                    let out = check("pull", run(strings(&current)).await?, &secrets)?;
                    Some(out.trim().to_string()).filter(|b| b != "HEAD" && !b.is_empty())
                }
            };
            fetch.extend(branch);
            check("pull", run(fetch).await?, &secrets)?;
            let merge = ["git", "-C", &dir, "merge", "--ff-only", "FETCH_HEAD"];
            check("pull", run(strings(&merge)).await?, &secrets)?;
            "pull"
        } else {
            let mut clone: Vec<String> = vec!["git".into(), "clone".into()];
            if let Some(b) = &req.branch {
                clone.extend(["--branch".into(), b.clone()]);
            }
            clone.extend(depth);
            clone.extend(["--".into(), remote.url.clone(), dir.clone()]);
            check("clone", run(clone).await?, &secrets)?;
            "clone"
        };
        let commit = check(
            action,
            run(strings(&["git", "-C", &dir, "rev-parse", "HEAD"])).await?,
            &secrets,
        )?;
        let branch = check(
            action,
            run(strings(&[
                "git",
                "-C",
                &dir,
                "rev-parse",
                "--abbrev-ref",
                "HEAD",
            ]))
            .await?,
            &secrets,
        )?;
        Ok(GitCheckout {
            action,
            dir,
            commit: commit.trim().to_string(),
            branch: branch.trim().to_string(),
        })
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// The command's stdout, or a `git_failed` error with its redacted stderr.
fn check(action: &str, r: ExecResult, secrets: &[&str]) -> Result<String, CoreError> {
    if r.exit_code == 0 && !r.timed_out {
        return Ok(r.stdout);
    }
    let detail = if r.stderr.trim().is_empty() {
        r.stdout.trim()
    } else {
        r.stderr.trim()
    };
    let why = if r.timed_out {
        "timed out".to_string()
    } else {
        format!("exit code {}", r.exit_code)
    };
    Err(CoreError::GitFailed(format!(
        "git {action} failed ({why}): {}",
        redact(detail, secrets)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        let r = parse_url("https://bob:s3cret@git.example.com/a/b.git").unwrap();
        assert_eq!(r.url, "https://git.example.com/a/b.git");
        assert_eq!(r.username.as_deref(), Some("bob"));
        assert_eq!(r.token.as_deref(), Some("s3cret"));
        let r = parse_url("https://tok123@github.com/x/y").unwrap();
        assert_eq!((r.username, r.token.as_deref()), (None, Some("tok123")));
        assert!(parse_url("git://10.1.2.3/repo").is_ok());
    }

    #[test]
    fn local_and_helper_urls_are_refused() {
        for url in [
            "file:///etc",
            "ext::sh -c touch% /tmp/x",
            "/srv/repo",
            "-u/x",
            "fd::17",
            "https://",
            "https://host/a b",
        ] {
            assert!(parse_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn default_dirs() {
        assert_eq!(default_dir("https://h/a/b.git"), "/workspace/b");
        assert_eq!(default_dir("https://h/a/b/"), "/workspace/b");
        assert_eq!(default_dir("https://h"), "/workspace/h");
        assert_eq!(default_dir("https://h/.."), "/workspace/repo");
    }

    #[test]
    fn redaction() {
        assert_eq!(redact("x tok123 y", &["tok123"]), "x *** y");
    }
}

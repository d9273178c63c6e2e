//! Registry credentials on the command line: `--user USER:PASS`, or `--user USER --password-stdin` so the
//! password stays out of `ps` and the shell's history (as `docker login` and nerdctl offer). Without
//! either, skiffd's (for `image pull`) or the caller's (for `image rpull`) docker `config.json` is used.

use std::io::Read;

use anyhow::{bail, Context};

/// The flags, shared by `image pull` and `image rpull`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct UserArgs {
    /// Registry credentials, USER:PASS, or USER with --password-stdin.
    #[arg(long, value_name = "USER[:PASS]")]
    pub user: Option<String>,
    /// Read the password of --user USER from standard input (one line).
    #[arg(long, requires = "user")]
    pub password_stdin: bool,
}

impl UserArgs {
    /// `(user, password)`, reading the password from stdin when asked to.
    pub fn credentials(&self) -> anyhow::Result<Option<(String, String)>> {
        self.credentials_from(std::io::stdin().lock())
    }

    fn credentials_from(&self, stdin: impl Read) -> anyhow::Result<Option<(String, String)>> {
        let Some(user) = &self.user else {
            return Ok(None);
        };
        match (user.split_once(':'), self.password_stdin) {
            (Some((name, password)), false) => Ok(Some((name.to_owned(), password.to_owned()))),
            (Some(_), true) => {
                bail!("--password-stdin reads the password: give --user USER without :PASS")
            }
            (None, false) => bail!("--user expects USER:PASS, or USER with --password-stdin"),
            (None, true) => {
                let mut password = String::new();
                stdin
                    .take(64 << 10)
                    .read_to_string(&mut password)
                    .context("read the password from standard input")?;
                let password = password.trim_end_matches(['\n', '\r']).to_owned();
                if password.is_empty() {
                    bail!("--password-stdin: standard input held no password");
                }
                Ok(Some((user.clone(), password)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(user: Option<&str>, password_stdin: bool) -> UserArgs {
        UserArgs {
            user: user.map(str::to_owned),
            password_stdin,
        }
    }

    #[test]
    fn user_and_password_come_from_the_flag_or_from_stdin() {
        let pair = |u: &str, p: &str| Some((u.to_owned(), p.to_owned()));
        assert_eq!(args(None, false).credentials_from(&b""[..]).unwrap(), None);
        assert_eq!(
            args(Some("u:p:q"), false)
                .credentials_from(&b""[..])
                .unwrap(),
            pair("u", "p:q")
        );
        assert_eq!(
            args(Some("u"), true)
                .credentials_from(&b"s3cret:x\r\n"[..])
                .unwrap(),
            pair("u", "s3cret:x")
        );
        assert!(args(Some("nopass"), false)
            .credentials_from(&b""[..])
            .is_err());
        assert!(args(Some("u:p"), true).credentials_from(&b"p"[..]).is_err());
        assert!(args(Some("u"), true).credentials_from(&b"\n"[..]).is_err());
    }
}

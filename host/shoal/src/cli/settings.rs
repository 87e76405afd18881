//! Where a role's settings come from, besides its flags: `SHOAL_*` environment variables and a
//! TOML file (`--config FILE` or `SHOAL_CONFIG`). Precedence: a flag on the command line, then its
//! environment variable, then the file, then the flag's default.
//!
//! Every flag `--some-flag` of the roles (`dev`, `master`, `agent`, `gateway`, `store`) reads
//! `SHOAL_SOME_FLAG` (flags that already had a variable, `--api` → `SHOAL_API`, `--token` →
//! `SHOAL_TOKEN`, keep it). The file holds the same names, with `-` or `_`, at its top level or in
//! a table named after the role, so one file can serve several roles on a machine:
//!
//! ```toml
//! nats = "nats://10.0.0.1:4222"        # every role that has --nats
//! [master]
//! listen = "0.0.0.0:7070"
//! store-replicas = 3
//! [agent]
//! attribute = ["rack=r1", "zone=a"]    # a repeatable flag takes a list
//! ```
//!
//! A name the running role has no flag for, a value of the wrong kind or a table that names no
//! role is refused with the file and the name in the message, before anything starts.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

/// The subcommands that run a process and take their flags from the environment and the file.
pub(crate) const ROLES: [&str; 5] = ["dev", "master", "agent", "gateway", "store"];

/// The environment variable of a flag: `--data-dir` → `SHOAL_DATA_DIR`.
pub(crate) fn env_name(long: &str) -> String {
    format!("SHOAL_{}", long.to_uppercase().replace('-', "_"))
}

/// `cmd` with a `SHOAL_*` variable for every flag of every role (those without one yet) and
/// `--config` on every role.
pub(crate) fn with_settings(cmd: Command) -> Command {
    let mut cmd = cmd;
    for role in ROLES {
        cmd = cmd.mut_subcommand(role, |sub| {
            let longs: Vec<(clap::Id, String)> = sub
                .get_arguments()
                .filter(|a| a.get_env().is_none() && !a.is_global_set())
                .filter_map(|a| a.get_long().map(|l| (a.get_id().clone(), l.to_owned())))
                .collect();
            let mut sub = sub.arg(
                clap::Arg::new("config")
                    .long("config")
                    .env("SHOAL_CONFIG")
                    .value_name("FILE")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("A TOML file of settings: the flags' names, at the top level or under [<role>] (flag > SHOAL_* variable > file > default)"),
            );
            for (id, long) in longs {
                sub = sub.mut_arg(id, |a| a.env(env_name(&long)));
            }
            sub
        });
    }
    cmd
}

/// The command line to parse: `args` with the settings of the config file that neither a flag
/// nor a variable gave already, appended as flags (so the file's values are checked by the same
/// parsers as the flags').
pub(crate) fn with_file_settings(
    cmd: &Command,
    matches: &ArgMatches,
    args: Vec<OsString>,
) -> anyhow::Result<Vec<OsString>> {
    let Some((role, sub)) = matches.subcommand() else { return Ok(args) };
    if !ROLES.contains(&role) || sub.subcommand().is_some() {
        return Ok(args);
    }
    let Some(path) = sub.try_get_one::<PathBuf>("config").ok().flatten() else { return Ok(args) };
    let role_cmd = cmd.find_subcommand(role).expect("a role the parser knows");
    let mut args = args;
    for (key, value) in file_settings(path, role)? {
        let long = key.replace('_', "-");
        let Some(arg) = role_cmd.get_arguments().find(|a| a.get_long() == Some(long.as_str()) && long != "config")
        else {
            bail!("{}: `{key}` is not a setting of `shoal {role}` (see `shoal {role} --help`)", path.display());
        };
        if matches!(sub.value_source(arg.get_id().as_str()), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
        {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        for v in flag_values(&value).with_context(|| format!("{}: `{key}`", path.display()))? {
            match (takes_value, v.as_str()) {
                (true, _) => args.push(format!("--{long}={v}").into()),
                (false, "true") => args.push(format!("--{long}").into()),
                (false, "false") => {}
                (false, _) => bail!("{}: `{key}` is a switch: true or false", path.display()),
            }
        }
    }
    Ok(args)
}

/// The `(name, value)` pairs of the file that apply to `role`: the top level's, then its table's.
fn file_settings(path: &Path, role: &str) -> anyhow::Result<Vec<(String, toml::Value)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the config file {}", path.display()))?;
    let table: toml::Table = text.parse().with_context(|| format!("{} is not valid TOML", path.display()))?;
    let mut settings = Vec::new();
    let mut own = Vec::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(t) if ROLES.contains(&key.as_str()) => {
                if key == role {
                    own.extend(t);
                }
            }
            toml::Value::Table(_) => {
                bail!("{}: [{key}] names no role (tables: {})", path.display(), ROLES.join(", "))
            }
            value => settings.push((key, value)),
        }
    }
    // A role's own table wins over the top level for the same name.
    settings.retain(|(k, _)| !own.iter().any(|(o, _)| o.replace('_', "-") == k.replace('_', "-")));
    settings.extend(own);
    Ok(settings)
}

/// A TOML value as the flag's text (a list gives the flag once per element).
fn flag_values(value: &toml::Value) -> anyhow::Result<Vec<String>> {
    Ok(match value {
        toml::Value::String(s) => vec![s.clone()],
        toml::Value::Integer(i) => vec![i.to_string()],
        toml::Value::Float(f) => vec![f.to_string()],
        toml::Value::Boolean(b) => vec![b.to_string()],
        toml::Value::Array(items) => {
            let mut out = Vec::new();
            for item in items {
                match item {
                    toml::Value::Array(_) | toml::Value::Table(_) => bail!("a list of plain values"),
                    item => out.extend(flag_values(item)?),
                }
            }
            out
        }
        toml::Value::Datetime(_) | toml::Value::Table(_) => bail!("a string, number, boolean or list"),
    })
}

/// Where a role keeps its data when `--data-dir` is not given: `/var/lib/shoal/<name>` when
/// running as root (a service), else `$XDG_STATE_HOME/shoal/<name>` (`~/.local/state/shoal/<name>`)
/// — never relative to the directory the process happens to start in. (`shoal dev` keeps
/// `./.shoal`: a development tool run from a project's directory.)
pub(crate) fn default_data_dir(name: &str) -> anyhow::Result<PathBuf> {
    if shoal_agent::isolation::effective_uid() == 0 {
        return Ok(PathBuf::from("/var/lib/shoal").join(name));
    }
    let state = match std::env::var_os("XDG_STATE_HOME").filter(|d| Path::new(d).is_absolute()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|d| Path::new(d).is_absolute()) {
            Some(home) => PathBuf::from(home).join(".local/state"),
            None => bail!("no HOME to keep data under: pass --data-dir"),
        },
    };
    Ok(state.join("shoal").join(name))
}

/// Parse the process's command line with its settings: flags, `SHOAL_*` variables, the file.
pub fn parse() -> super::Cli {
    parse_from(std::env::args_os().collect())
}

/// [`parse`] for the given arguments (the first is the program's name); exits with clap's
/// message and code 2 on a usage error, as clap does.
pub fn parse_from(args: Vec<OsString>) -> super::Cli {
    use clap::{CommandFactory, FromArgMatches};
    let cmd = with_settings(super::Cli::command());
    let matches = cmd.clone().try_get_matches_from(&args).unwrap_or_else(|e| e.exit());
    let args = match with_file_settings(&cmd, &matches, args) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::exit(2);
        }
    };
    let matches = cmd.try_get_matches_from(args).unwrap_or_else(|e| e.exit());
    super::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `args` parse to (as `Debug`), with this process's environment (which the tests do
    /// not change: the variables' precedence is tested on a real process, in tests/cluster).
    fn parse(args: &[&str]) -> Result<String, String> {
        use clap::{CommandFactory, FromArgMatches};
        let cmd = with_settings(crate::cli::Cli::command());
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let matches = cmd.clone().try_get_matches_from(&args).map_err(|e| e.to_string())?;
        let args = with_file_settings(&cmd, &matches, args).map_err(|e| format!("{e:#}"))?;
        let matches = cmd.clone().try_get_matches_from(args).map_err(|e| e.to_string())?;
        let cli = crate::cli::Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
        Ok(format!("{cli:?}"))
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut f, text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn a_flag_beats_the_file_which_beats_the_default() {
        let f = file(
            "grace-ms = 111\n[agent]\nhostname = \"from-file\"\nattribute = [\"rack=r1\", \"zone=a\"]\n[gateway]\nworkers = 9\n",
        );
        let path = f.path().to_str().expect("utf-8");
        let out = parse(&["shoal", "agent", "--config", path]).expect("parses");
        assert!(
            out.contains("grace_ms: 111") && out.contains("\"from-file\"") && out.contains("\"rack=r1\", \"zone=a\""),
            "{out}"
        );
        let out =
            parse(&["shoal", "agent", "--config", path, "--hostname", "from-flag", "--grace-ms", "7"]).expect("parses");
        assert!(out.contains("\"from-flag\"") && out.contains("grace_ms: 7") && out.contains("\"rack=r1\""), "{out}");
        let out = parse(&["shoal", "agent"]).expect("parses");
        assert!(out.contains("grace_ms: 5000") && out.contains("hostname: None"), "{out}");
    }

    #[test]
    fn switches_take_booleans_and_a_role_table_beats_the_top_level() {
        let f = file("shards = 2\n[dev]\nsync = true\nno_gateway = false\nshards = 8\n");
        let out = parse(&["shoal", "dev", "--config", f.path().to_str().expect("utf-8")]).expect("parses");
        assert!(out.contains("sync: true") && out.contains("no_gateway: false") && out.contains("shards: 8"), "{out}");
    }

    #[test]
    fn a_bad_file_is_refused_with_the_file_and_the_name() {
        let unknown = file("[dev]\nlisten-on = \"x\"\n");
        let err = parse(&["shoal", "dev", "--config", unknown.path().to_str().expect("utf-8")]).expect_err("refused");
        assert!(err.contains("`listen-on` is not a setting of `shoal dev`"), "{err}");
        let table = file("[masters]\nlisten = \"x\"\n");
        let err = parse(&["shoal", "dev", "--config", table.path().to_str().expect("utf-8")]).expect_err("refused");
        assert!(err.contains("[masters] names no role"), "{err}");
        let bad_value = file("[dev]\nshards = \"many\"\n");
        let err = parse(&["shoal", "dev", "--config", bad_value.path().to_str().expect("utf-8")]).expect_err("refused");
        assert!(err.contains("many"), "{err}");
        let switch = file("[dev]\nsync = \"yes\"\n");
        let err = parse(&["shoal", "dev", "--config", switch.path().to_str().expect("utf-8")]).expect_err("refused");
        assert!(err.contains("is a switch"), "{err}");
        let err = parse(&["shoal", "dev", "--config", "/nonexistent/shoal.toml"]).expect_err("refused");
        assert!(err.contains("reading the config file /nonexistent/shoal.toml"), "{err}");
    }

    #[test]
    fn every_role_flag_has_its_variable() {
        use clap::CommandFactory;
        let cmd = with_settings(crate::cli::Cli::command());
        for role in ROLES {
            let sub = cmd.find_subcommand(role).expect("a role");
            for arg in sub.get_arguments().filter(|a| a.get_long().is_some() && !a.is_global_set()) {
                assert!(
                    arg.get_env().is_some(),
                    "shoal {role} --{} has no variable",
                    arg.get_long().unwrap_or_default()
                );
            }
        }
        let dev = cmd.find_subcommand("dev").expect("dev");
        let data_dir = dev.get_arguments().find(|a| a.get_long() == Some("data-dir")).expect("--data-dir");
        assert_eq!(data_dir.get_env().expect("a variable"), "SHOAL_DATA_DIR");
    }
}

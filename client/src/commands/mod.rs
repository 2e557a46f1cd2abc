//! One module per verb group (`users` has `whoami`, `user` and `token`); [`run`] resolves the settings and dispatches.

pub mod checkpoints;
pub mod generate;
pub mod gpus;
pub mod jobs;
pub mod notify;
pub mod remove;
pub mod submit;
pub mod users;
pub mod watch;

use clap::CommandFactory as _;

use crate::cli::{Cli, Command, NotifyCommand, TokenCommand, UserCommand};
use crate::conn::Conn;
use crate::{config, Outcome};

pub async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    if let Command::Completions { shell } = cli.command {
        // Needs no server: completions are generated from the clap definitions.
        let mut cmd = Cli::command();
        clap_complete::generate(shell, &mut cmd, "orpoctl", &mut std::io::stdout());
        return Ok(Outcome::Ok);
    }
    let conn = Conn::new(config::resolve(&cli.global)?)?;
    match cli.command {
        Command::Submit {
            job,
            watch,
            name,
            priority,
            json,
        } => submit::submit(&conn, &job, name, priority, json, watch).await,
        Command::Plan { job, json } => submit::plan(&conn, &job, json).await,
        Command::List {
            state,
            owner,
            limit,
            json,
        } => jobs::list(&conn, state, owner, limit, json).await,
        Command::Status { id, json } => jobs::status(&conn, id, json).await,
        Command::Metrics { id, last, json } => jobs::metrics(&conn, id, last, json).await,
        Command::Cancel { id } => jobs::control(&conn, id, jobs::Verb::Cancel).await,
        Command::Pause { id } => jobs::control(&conn, id, jobs::Verb::Pause).await,
        Command::Resume { id } => jobs::control(&conn, id, jobs::Verb::Resume).await,
        Command::Rm { ids } => remove::remove(&conn, &ids).await,
        Command::Watch { id } => watch::watch(&conn, id).await,
        Command::Logs { id, follow, json } => watch::logs(&conn, id, follow, json).await,
        Command::Checkpoints { id, json } => checkpoints::list(&conn, id, json).await,
        Command::Download {
            id,
            checkpoint,
            output,
        } => checkpoints::download(&conn, id, checkpoint.as_deref(), &output).await,
        Command::Generate {
            id,
            prompt,
            checkpoint,
            compare_base,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            json,
        } => {
            let req = orpo_api::GenerateRequest {
                prompts: prompt,
                checkpoint,
                compare_base,
                max_new_tokens: Some(max_new_tokens),
                temperature,
                top_k,
                top_p,
                seed,
            };
            generate::generate(&conn, id, &req, json).await
        }
        Command::Chart { id, metric, output } => {
            jobs::chart(&conn, id, &metric, output.as_deref()).await
        }
        Command::Gpus { json } => gpus::gpus(&conn, json).await,
        Command::Whoami { json } => users::whoami(&conn, json).await,
        Command::User(UserCommand::Add { name, admin }) => {
            users::user_add(&conn, name, admin).await
        }
        Command::User(UserCommand::List { json }) => users::user_list(&conn, json).await,
        Command::User(UserCommand::Rm { name }) => users::user_rm(&conn, &name).await,
        Command::Token(TokenCommand::Create {
            user,
            expires,
            json,
        }) => users::token_create(&conn, user, expires, json).await,
        Command::Token(TokenCommand::List { json }) => users::token_list(&conn, json).await,
        Command::Token(TokenCommand::Revoke { id }) => users::token_revoke(&conn, &id).await,
        Command::Notify(NotifyCommand::Add {
            url,
            format,
            on,
            user,
        }) => notify::add(&conn, url, format, on, user).await,
        Command::Notify(NotifyCommand::List { json }) => notify::list(&conn, json).await,
        Command::Notify(NotifyCommand::Rm { id }) => notify::remove(&conn, &id).await,
        Command::Notify(NotifyCommand::Test { id }) => notify::test(&conn, &id).await,
        Command::Completions { .. } => unreachable!("handled above"),
    }
}

/// Prints a value as pretty JSON on stdout (the `--json` of every read verb).
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<Outcome> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(Outcome::Ok)
}

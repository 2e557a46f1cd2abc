//! `orpod user add|list|rm` and `orpod token create|list|revoke`: users and tokens written straight
//! into the state folder's store. sled lets one process open it, so these run while the daemon
//! is stopped (that is how the first admin is made); while it runs, an admin uses `orpoctl`.

use std::path::PathBuf;

use anyhow::Context;
use orpo_api::UserView;

use crate::auth::tokens;
use crate::cli::{StateArgs, TokenCommand, UserCommand};
use crate::config::ServeConfig;
use crate::store::Store;

pub fn user(cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add { name, admin, state } => with_store(state, |store| async move {
            orpo_api::check_user_name(&name).map_err(anyhow::Error::msg)?;
            let first = !store.has_users()?;
            store
                .add_user(UserView {
                    name: name.clone(),
                    admin,
                    created_at: crate::now_rfc3339(),
                })
                .await?;
            let role = if admin { "admin" } else { "user" };
            eprintln!("added {role} {name}; make a token with `orpod token create --user {name}`");
            if first {
                eprintln!(
                    "this is the first user: from now on every request to the daemon needs a token"
                );
                if !admin {
                    eprintln!(
                        "note: {name} is not an admin, so no one can add users through the API; \
                         add an admin here with `orpod user add NAME --admin`"
                    );
                }
            }
            Ok(())
        }),
        UserCommand::List { state } => with_store(state, |store| async move {
            println!("{:<32}  {:<5}  CREATED", "NAME", "ADMIN");
            for u in store.users()? {
                let admin = if u.admin { "yes" } else { "no" };
                println!("{:<32}  {admin:<5}  {}", u.name, u.created_at);
            }
            Ok(())
        }),
        UserCommand::Rm { name, state } => with_store(state, |store| async move {
            let Some(removed) = store.remove_user(name.clone(), false).await? else {
                anyhow::bail!("no user {name} (see `orpod user list`)");
            };
            eprintln!(
                "removed {} {name}: {} token(s) revoked, {} notification endpoint(s) and {} data \
                 set claim(s) removed; their finished jobs stay",
                if removed.user.admin { "admin" } else { "user" },
                removed.tokens,
                removed.endpoints,
                removed.claims
            );
            if !store.has_users()? {
                eprintln!("that was the last user: the daemon runs open again, on loopback only");
            }
            Ok(())
        }),
    }
}

pub fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            user,
            expires,
            state,
        } => {
            let lifetime = orpo_api::parse_lifetime(&expires)
                .map_err(|e| anyhow::anyhow!("--expires: {e}"))?;
            with_store(state, |store| async move {
                if store.user(&user)?.is_none() {
                    anyhow::bail!("no user {user}: add it with `orpod user add {user}`");
                }
                let t = tokens::create(&store, &user, lifetime).await?;
                println!("{}", t.token);
                eprintln!(
                    "token {} for {user}, expires {}; it is shown only this once (the daemon \
                     keeps its hash): put it in ~/.config/orpoctl/config.toml as \
                     token = \"...\", or in ORPOD_TOKEN",
                    t.info.id,
                    t.info.expires_at.as_deref().unwrap_or("never"),
                );
                Ok(())
            })
        }
        TokenCommand::List { state } => with_store(state, |store| async move {
            println!("{:<8}  {:<32}  {:<24}  EXPIRES", "ID", "USER", "CREATED");
            for t in store.tokens(None)? {
                let v = t.view;
                let expires = v.expires_at.as_deref().unwrap_or("never");
                println!(
                    "{:<8}  {:<32}  {:<24}  {expires}",
                    v.id, v.user, v.created_at
                );
            }
            Ok(())
        }),
        TokenCommand::Revoke { id, state } => with_store(state, |store| async move {
            match store.revoke_token(id.clone(), |_| true).await? {
                Some(t) => {
                    eprintln!("revoked token {id} of {}", t.view.user);
                    Ok(())
                }
                None => anyhow::bail!("no token {id} (see `orpod token list`)"),
            }
        }),
    }
}

/// The state folder's store, opened for `work`, then flushed and closed.
fn with_store<F, Fut>(state: StateArgs, work: F) -> anyhow::Result<()>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut config = ServeConfig::load(state.config.as_deref())?;
    if let Some(dir) = state.state_dir {
        config.state_dir = dir;
    }
    let db: PathBuf = config.state_dir.join("db");
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating {}", config.state_dir.display()))?;
    let store = Store::open(&db).map_err(|e| {
        let text = e.to_string();
        if text.contains("could not acquire lock") {
            anyhow::anyhow!(
                "the state folder {} is in use by a running `orpod serve`: stop it first, or \
                 ask it as an admin with `orpoctl user ...` / `orpoctl token ...`",
                config.state_dir.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("opening the store in {}", db.display()))
        }
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let result = work(store.clone()).await;
        store.close().await?;
        result
    })
}

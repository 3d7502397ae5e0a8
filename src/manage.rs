//! `redline rules …`, `redline webhook …` and `redline runs …`: rule sets, webhooks and runs,
//! managed in the store directly (like `redline token`), so they work with no server running.

use std::time::Duration;

use anyhow::Context;
use redline_core::rules::{RuleSet, Severity};
use redline_core::wire::{NewWebhook, UpdateRun, WebhookFormat, WebhookSecret};
use redline_core::{RuleSetName, RunId, WebhookName};
use redline_server::alerts::guard::Allowlist;
use redline_server::alerts::{DeliveryConfig, deliver_now, sign};

use crate::cli::{DeliveryArgs, RulesCommand, RunsCommand, WebhookCommand};
use crate::commands::open;

impl DeliveryArgs {
    pub fn config(&self) -> anyhow::Result<DeliveryConfig> {
        anyhow::ensure!(
            self.max_attempts >= 1,
            "--webhook-max-attempts must be at least 1"
        );
        anyhow::ensure!(
            self.timeout_ms >= 1,
            "--webhook-timeout-ms must be at least 1"
        );
        Ok(DeliveryConfig {
            allow: Allowlist::parse(&self.allow).map_err(anyhow::Error::msg)?,
            timeout: Duration::from_millis(self.timeout_ms),
            max_attempts: self.max_attempts,
            backoff_base: Duration::from_millis(self.backoff_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms.max(self.backoff_ms)),
            ..DeliveryConfig::default()
        })
    }
}

fn webhook_name(name: String) -> anyhow::Result<WebhookName> {
    WebhookName::parse(name).map_err(|e| anyhow::anyhow!("webhook name {e}"))
}

fn rule_set_name(name: String) -> anyhow::Result<RuleSetName> {
    RuleSetName::parse(name).map_err(|e| anyhow::anyhow!("rule set name {e}"))
}

fn read_rule_file(path: &std::path::Path) -> anyhow::Result<(String, RuleSet)> {
    let source =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let parsed = RuleSet::parse(&source).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((source, parsed))
}

pub async fn rules(cmd: RulesCommand) -> anyhow::Result<()> {
    match cmd {
        RulesCommand::Check { files } => {
            anyhow::ensure!(!files.is_empty(), "name at least one rule file");
            for f in files {
                let (_, set) = read_rule_file(&f)?;
                let names: Vec<_> = set.rules.iter().map(|r| r.name.as_str()).collect();
                println!(
                    "{}: ok, {} rules: {}",
                    f.display(),
                    names.len(),
                    names.join(", ")
                );
            }
        }
        RulesCommand::List { store } => {
            for s in open(&store).await?.rule_sets().await? {
                println!("{}\tv{}\t{}", s.name, s.version, s.created_at);
            }
        }
        RulesCommand::Show {
            name,
            version,
            store,
        } => {
            let name = rule_set_name(name)?;
            let s = open(&store).await?.rule_set(&name, version).await?;
            eprintln!("# {} version {} ({})", s.name, s.version, s.created_at);
            print!("{}", s.source);
        }
        RulesCommand::Put { name, file, store } => {
            let name = rule_set_name(name)?;
            let (source, set) = read_rule_file(&file)?;
            let s = open(&store).await?.put_rule_set(&name, &source).await?;
            println!(
                "{} version {} stored ({} rules)",
                s.name,
                s.version,
                set.rules.len()
            );
        }
    }
    Ok(())
}

pub async fn webhook(cmd: WebhookCommand) -> anyhow::Result<()> {
    match cmd {
        WebhookCommand::Add {
            name,
            url,
            format,
            min_severity,
            secret,
            store,
        } => {
            let req = NewWebhook {
                name: webhook_name(name)?,
                url,
                format: WebhookFormat::parse(&format).unwrap_or_default(),
                secret: secret.map(WebhookSecret),
                // clap has already restricted both to their known spellings.
                min_severity: Severity::parse(&min_severity),
            };
            req.validate()
                .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?;
            let secret = sign::given_or_new(req.secret.as_ref().map(WebhookSecret::expose))
                .map_err(|e| anyhow::anyhow!("--secret {e}"))?;
            open(&store).await?.create_webhook(&req, &secret).await?;
            eprintln!(
                "Added webhook {}. Its signing secret is shown only now:",
                req.name
            );
            println!("{secret}");
        }
        WebhookCommand::List { store } => {
            for w in open(&store).await?.webhooks().await? {
                println!(
                    "{}\t{}\t{}\tmin {}\tcreated {}",
                    w.name,
                    w.format.as_str(),
                    w.url,
                    w.min_severity.as_str(),
                    w.created_at
                );
            }
        }
        WebhookCommand::Remove { name, store } => {
            let name = webhook_name(name)?;
            open(&store).await?.delete_webhook(&name).await?;
            eprintln!("Removed webhook {name}.");
        }
        WebhookCommand::Test {
            name,
            delivery,
            store,
        } => {
            let name = webhook_name(name)?;
            let a = deliver_now(&*open(&store).await?, &delivery.config()?, &name).await?;
            let status = a
                .status
                .map_or_else(|| "no answer".to_owned(), |s| format!("HTTP {s}"));
            println!(
                "{}: {status} in {:.0} ms{}",
                a.outcome,
                a.latency_ms,
                a.error.map(|e| format!(" ({e})")).unwrap_or_default()
            );
            anyhow::ensure!(a.outcome == "delivered", "the test delivery failed");
        }
        WebhookCommand::Deliveries { name, limit, store } => {
            let name = webhook_name(name)?;
            for a in open(&store).await?.deliveries(&name, limit).await? {
                println!(
                    "{}\t{}\tattempt {}\t{}\t{:.0} ms\t{}{}",
                    a.started_at,
                    a.message_id,
                    a.attempt,
                    a.status.map_or_else(|| "-".to_owned(), |s| s.to_string()),
                    a.latency_ms,
                    a.outcome,
                    a.error.map(|e| format!("\t{e}")).unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

fn run_id(id: String) -> anyhow::Result<RunId> {
    RunId::parse(id).map_err(|e| anyhow::anyhow!("run id {e}"))
}

/// Asks on the terminal whether to go ahead; without a terminal the answer is no.
fn confirmed(question: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

pub async fn runs(cmd: RunsCommand) -> anyhow::Result<()> {
    match cmd {
        RunsCommand::Delete {
            run_id: id,
            yes,
            store,
        } => {
            let id = run_id(id)?;
            let question = format!(
                "Delete run {id} with its series, signals, rule events and alert deliveries?"
            );
            anyhow::ensure!(
                yes || confirmed(&question)?,
                "run {id} was not deleted: confirm on a terminal, or pass --yes"
            );
            open(&store).await?.delete_run(&id).await?;
            eprintln!("Deleted run {id}.");
        }
        RunsCommand::Edit {
            run_id: id,
            name,
            tags,
            no_tags,
            store,
        } => {
            let id = run_id(id)?;
            let req = UpdateRun {
                name,
                tags: (no_tags || !tags.is_empty()).then_some(tags),
            };
            anyhow::ensure!(
                req.name.is_some() || req.tags.is_some(),
                "nothing to change: give --name, --tag or --no-tags"
            );
            req.validate()
                .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?;
            let run = open(&store).await?.update_run(&id, &req).await?;
            println!("{}\t{}\t{}", run.id, run.name, run.tags.join(","));
        }
    }
    Ok(())
}

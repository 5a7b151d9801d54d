//! `tollgate price`: a tenant's price table, so workers may report what an LLM call used
//! (model and tokens) and the cluster derives its cost.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate_client::v1;

use super::money::{decimal_micros, format_micros, parse_price};
use super::ops::{out, out_json, Ops, UsageError};
use super::render::Table;

/// The table shipped with Tollgate: public list prices, with the date they were read.
pub const DEFAULT_TABLE: &str = include_str!("../../prices/default.toml");
/// Largest price file `price load` reads.
const TABLE_BYTES_MAX: u64 = 1 << 20;

#[derive(Debug, Subcommand)]
pub enum PriceCommand {
    /// Set one model's price (replacing its entry). Prices are money per --per tokens.
    ///
    /// Examples:
    ///   tollgate price put --tenant acme --model gpt-4o --input 2.50 --output 10.00 --cached-input 1.25 --per 1M
    ///   tollgate price put --tenant acme --model '*' --input 5 --output 15   (the fallback for unlisted models)
    #[command(verbatim_doc_comment)]
    Put {
        #[arg(long)]
        tenant: String,
        /// The model as workers name it (`gpt-4o`; also prices `gpt-4o-2024-08-06`), or
        /// `*` for every model the table does not list.
        #[arg(long)]
        model: String,
        /// Price of input tokens (2.50, $2.50 or 2.50usd).
        #[arg(long, value_parser = parse_price)]
        input: u64,
        /// Price of output tokens.
        #[arg(long, value_parser = parse_price)]
        output: u64,
        /// Price of input tokens read from the provider's cache (default: --input).
        #[arg(long, value_parser = parse_price)]
        cached_input: Option<u64>,
        /// How many tokens the prices are for: 1M, 1K or a number.
        #[arg(long, default_value = "1M", value_parser = parse_per)]
        per: u64,
    },
    /// Remove a model's price.
    Delete {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        model: String,
    },
    /// The tenant's price table.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Set every price of a TOML table: the one shipped with Tollgate unless --file.
    Load {
        #[arg(long)]
        tenant: String,
        /// A table in the shipped table's format (`tollgate price default` prints it).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Print the table shipped with Tollgate.
    Default,
}

/// `1M` → 1_000_000, `1K` → 1_000, `500` → 500.
pub fn parse_per(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, scale) = match text.char_indices().last() {
        Some((at, 'm' | 'M')) => (&text[..at], 1_000_000),
        Some((at, 'k' | 'K')) => (&text[..at], 1_000),
        _ => (text, 1),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|&n| (1..=tollgate_ledger::PER_TOKENS_MAX).contains(&n))
        .ok_or_else(|| {
            format!(
                "--per {text:?}: write 1M, 1K or a number of tokens, from 1 to {}",
                tollgate_ledger::PER_TOKENS_MAX
            )
        })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    read: Option<String>,
    currency: Option<String>,
    per: Option<String>,
    price: Vec<TableEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableEntry {
    model: String,
    input: String,
    output: String,
    cached_input: Option<String>,
}

/// The prices of a table file, checked whole before any is sent.
fn parse_table(text: &str) -> Result<(TableFile, Vec<v1::Price>), String> {
    let table: TableFile = toml::from_str(text).map_err(|e| format!("price table: {e}"))?;
    let per = parse_per(table.per.as_deref().unwrap_or("1M"))?;
    let prices = table
        .price
        .iter()
        .map(|entry| {
            let cached = entry.cached_input.as_deref().map(parse_price).transpose()?;
            Ok(v1::Price {
                model: entry.model.clone(),
                input_micros: parse_price(&entry.input)?,
                output_micros: parse_price(&entry.output)?,
                cached_input_micros: cached,
                per_tokens: per,
                version: 0,
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| format!("price table, model entry: {e}"))?;
    Ok((table, prices))
}

/// The shipped table's prices; it is checked by a test, so it parses.
pub fn default_prices() -> Vec<v1::Price> {
    parse_table(DEFAULT_TABLE)
        .map(|(_, prices)| prices)
        .unwrap_or_default()
}

fn read_table(file: Option<&PathBuf>) -> anyhow::Result<String> {
    let Some(path) = file else {
        return Ok(DEFAULT_TABLE.to_owned());
    };
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(TABLE_BYTES_MAX).read_to_string(&mut text))
        .with_context(|| format!("could not read the price table {}", path.display()))?;
    Ok(text)
}

pub async fn price(ops: &Ops, command: PriceCommand) -> anyhow::Result<()> {
    match command {
        PriceCommand::Put {
            tenant,
            model,
            input,
            output,
            cached_input,
            per,
        } => {
            let price = v1::Price {
                model: model.clone(),
                input_micros: input,
                output_micros: output,
                cached_input_micros: cached_input,
                per_tokens: per,
                version: 0,
            };
            let applied = ops.client.put_price(&tenant, price).await.map_err(|e| {
                ops.failed(
                    format!("could not put the price of {model:?} for {tenant:?}"),
                    e,
                )
            })?;
            ops.applied(
                &format!("price of {model:?} for tenant {tenant:?} put"),
                applied,
            )
        }
        PriceCommand::Delete { tenant, model } => {
            let applied = ops
                .client
                .delete_price(&tenant, &model)
                .await
                .map_err(|e| {
                    ops.failed(
                        format!("could not delete the price of {model:?} for {tenant:?}"),
                        e,
                    )
                })?;
            ops.applied(
                &format!("price of {model:?} for tenant {tenant:?} deleted"),
                applied,
            )
        }
        PriceCommand::List { tenant } => list(ops, &tenant).await,
        PriceCommand::Load { tenant, file } => load(ops, &tenant, file.as_ref()).await,
        PriceCommand::Default => out(DEFAULT_TABLE),
    }
}

async fn list(ops: &Ops, tenant: &str) -> anyhow::Result<()> {
    let prices = ops
        .client
        .list_prices(tenant)
        .await
        .map_err(|e| ops.failed(format!("could not list the prices of {tenant:?}"), e))?;
    if ops.json {
        return out_json(&Value::Array(prices.iter().map(price_json).collect()));
    }
    if prices.is_empty() {
        return out(&format!(
            "tenant {tenant:?} has no prices: usage must come with a cost \
             (`tollgate price load --tenant {tenant}` sets the shipped table)\n"
        ));
    }
    let mut table = Table::new(&[
        "MODEL",
        "INPUT",
        "CACHED INPUT",
        "OUTPUT",
        "PER TOKENS",
        "VERSION",
    ]);
    for p in &prices {
        table.row(vec![
            p.model.clone(),
            format_micros(p.input_micros),
            format_micros(p.cached_input_micros.unwrap_or(p.input_micros)),
            format_micros(p.output_micros),
            p.per_tokens.to_string(),
            p.version.to_string(),
        ]);
    }
    out(&table.render())
}

fn price_json(p: &v1::Price) -> Value {
    let cached = p.cached_input_micros.unwrap_or(p.input_micros);
    json!({
        "model": p.model,
        "input_micros": p.input_micros,
        "input": decimal_micros(p.input_micros),
        "cached_input_micros": cached,
        "cached_input": decimal_micros(cached),
        "output_micros": p.output_micros,
        "output": decimal_micros(p.output_micros),
        "per_tokens": p.per_tokens,
        "version": p.version,
    })
}

async fn load(ops: &Ops, tenant: &str, file: Option<&PathBuf>) -> anyhow::Result<()> {
    let text = read_table(file)?;
    let (table, prices) = parse_table(&text).map_err(UsageError)?;
    for price in &prices {
        ops.client
            .put_price(tenant, price.clone())
            .await
            .map_err(|e| ops.failed(format!("could not put the price of {:?}", price.model), e))?;
    }
    let read = table.read.as_deref().unwrap_or("an unknown date");
    let currency = table.currency.as_deref().unwrap_or("the tenant's currency");
    if ops.json {
        return out_json(&json!({"tenant": tenant, "prices": prices.len(), "read": table.read}));
    }
    out(&format!(
        "{} prices ({currency}, as read {read}) put for tenant {tenant:?}\n",
        prices.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_table_parses_and_prices_every_entry() {
        let (table, prices) = parse_table(DEFAULT_TABLE).unwrap();
        assert!(
            table.read.is_some(),
            "the shipped table says when it was read"
        );
        assert!(prices.len() >= 10);
        let gpt4o = prices.iter().find(|p| p.model == "gpt-4o").unwrap();
        assert_eq!(
            (gpt4o.input_micros, gpt4o.output_micros, gpt4o.per_tokens),
            (2_500_000, 10_000_000, 1_000_000)
        );
    }

    #[test]
    fn per_takes_suffixes_and_refuses_nonsense() {
        assert_eq!(parse_per("1M"), Ok(1_000_000));
        assert_eq!(parse_per("1k"), Ok(1_000));
        assert_eq!(parse_per("250"), Ok(250));
        for bad in ["0", "", "M", "-1M", "2000000K", "1.5M"] {
            assert!(parse_per(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_table_with_a_bad_price_is_refused_whole() {
        let text = "[[price]]\nmodel = \"a\"\ninput = \"1\"\noutput = \"1\"\n\n\
                    [[price]]\nmodel = \"b\"\ninput = \"-1\"\noutput = \"1\"\n";
        assert!(parse_table(text).unwrap_err().contains("negative"));
        assert!(parse_table("[[price]]\nmodel = \"a\"\n").is_err());
    }
}

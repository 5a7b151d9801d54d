//! Price tables: what a model costs a tenant, so a worker may report what an LLM call used
//! (model and token counts) and the ledger derives the cost.
//!
//! Each tenant has its own table, set by admins and replicated like limits. A cost is
//! derived with integer arithmetic only and rounded up, so every replica charges the same
//! micro-unit and a price never undercharges; the audit record of a priced charge names the
//! entry used (model and version).

use serde::{Deserialize, Serialize};

use super::audit::{AuditEvent, Fact};
use super::state::Tenant;
use super::{
    Amounts, Bound, InvalidInput, Ledger, ModelId, Outcome, Rejection, RequestId, TenantId,
    AMOUNT_MAX,
};

/// Most price entries a tenant may hold.
pub const PRICES_PER_TENANT_MAX: usize = 256;
/// The model name of a tenant's fallback entry: used for models it has no entry for.
pub const FALLBACK_MODEL: &str = "*";
/// The default and the largest `per_tokens` of a price.
pub const PER_TOKENS_DEFAULT: u64 = 1_000_000;
pub const PER_TOKENS_MAX: u64 = 1_000_000_000;

/// A model's price, in micro-units of the tenant's currency per `per_tokens` tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Price {
    pub input_micros: u64,
    pub output_micros: u64,
    pub cached_input_micros: u64,
    pub per_tokens: u64,
}

impl Price {
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if self.per_tokens == 0 || self.per_tokens > PER_TOKENS_MAX {
            return Err(InvalidInput(format!(
                "price per_tokens is {}; it must be 1 to {PER_TOKENS_MAX}",
                self.per_tokens
            )));
        }
        for (name, value) in [
            ("input", self.input_micros),
            ("output", self.output_micros),
            ("cached_input", self.cached_input_micros),
        ] {
            if value > AMOUNT_MAX {
                return Err(InvalidInput(format!(
                    "price {name} is {value} micro-units, above AMOUNT_MAX ({AMOUNT_MAX})"
                )));
            }
        }
        Ok(())
    }

    /// The cost of `usage` at this price, rounded up to the micro-unit; None above
    /// `AMOUNT_MAX`. Exact: the sum is taken in 128 bits and divided once.
    pub fn cost_of(&self, usage: &Usage) -> Option<u64> {
        let part = |tokens: u64, micros: u64| u128::from(tokens) * u128::from(micros);
        let total = part(usage.input_tokens, self.input_micros)
            + part(usage.output_tokens, self.output_micros)
            + part(usage.cached_input_tokens, self.cached_input_micros);
        let cost = total.div_ceil(u128::from(self.per_tokens.max(1)));
        u64::try_from(cost).ok().filter(|&c| c <= AMOUNT_MAX)
    }
}

/// A tenant's entry for one model: the price and the version that set it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PriceEntry {
    pub model: ModelId,
    pub price: Price,
    /// The tenant's price-table version when the entry was set (1, 2, 3, ... per tenant).
    pub version: u64,
}

/// What an LLM call used, as its provider reports it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Usage {
    pub model: ModelId,
    /// Input tokens billed at the full input price.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input tokens read from the provider's prompt cache.
    pub cached_input_tokens: u64,
}

impl Usage {
    pub fn validate(&self) -> Result<(), InvalidInput> {
        self.model.validate()?;
        for (name, value) in [
            ("input_tokens", self.input_tokens),
            ("output_tokens", self.output_tokens),
            ("cached_input_tokens", self.cached_input_tokens),
        ] {
            if value > AMOUNT_MAX {
                return Err(InvalidInput(format!(
                    "usage.{name} is {value}, above AMOUNT_MAX ({AMOUNT_MAX})"
                )));
            }
        }
        Ok(())
    }

    /// Every token the call used; saturating (each part is at most `AMOUNT_MAX`).
    pub fn tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.output_tokens)
            .saturating_add(self.cached_input_tokens)
    }
}

/// The price entry a charge was derived from, as the audit record names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PriceRef {
    /// The entry's model: the usage's model, or `*` when the fallback priced it.
    pub model: ModelId,
    pub version: u64,
}

impl Tenant {
    /// The entry that prices `model`: its own; else the longest entry that names its
    /// family (`gpt-4o` prices `gpt-4o-2024-08-06`, as providers report dated snapshots);
    /// else the tenant's fallback.
    pub fn price_for(&self, model: &ModelId) -> Option<&PriceEntry> {
        let find = |name: &str| {
            self.prices
                .binary_search_by(|e| e.model.as_str().cmp(name))
                .ok()
                .and_then(|i| self.prices.get(i))
        };
        let name = model.as_str();
        let family = |entry: &&PriceEntry| {
            let prefix = entry.model.as_str();
            prefix != FALLBACK_MODEL
                && name.len() > prefix.len()
                && name.starts_with(prefix)
                && name.as_bytes().get(prefix.len()) == Some(&b'-')
        };
        find(name)
            .or_else(|| {
                self.prices
                    .iter()
                    .filter(family)
                    .max_by_key(|e| e.model.as_str().len())
            })
            .or_else(|| find(FALLBACK_MODEL))
    }

    /// `amounts` with its cost derived from `usage` (and its tokens, when it gives none),
    /// and the entry used. Changes nothing.
    pub fn priced(
        &self,
        amounts: &Amounts,
        usage: &Usage,
    ) -> Result<(Amounts, PriceRef), Rejection> {
        let Some(entry) = self.price_for(&usage.model) else {
            return Err(Rejection::Unpriced {
                tenant: self.id.clone(),
                model: usage.model.clone(),
            });
        };
        let Some(cost_micros) = entry.price.cost_of(usage) else {
            return Err(Rejection::Invalid(InvalidInput(format!(
                "the usage costs more than AMOUNT_MAX ({AMOUNT_MAX}) micro-units at the price \
                 of {}",
                entry.model
            ))));
        };
        let tokens = if amounts.tokens == 0 {
            usage.tokens()
        } else {
            amounts.tokens
        };
        let priced = Amounts {
            tokens,
            cost_micros,
            calls: amounts.calls,
        };
        let used = PriceRef {
            model: entry.model.clone(),
            version: entry.version,
        };
        Ok((priced, used))
    }
}

impl Ledger {
    /// Sets `model`'s entry in the tenant's table (a new version), audited.
    pub(super) fn put_price(
        &mut self,
        now_ms: u64,
        request_id: &RequestId,
        (t, tenant_id): (u32, &TenantId),
        model: &ModelId,
        price: &Price,
    ) -> Outcome {
        let Some(tenant) = self.tenants.get_mut(t) else {
            return super::commands::unknown_tenant(tenant_id);
        };
        let at = tenant
            .prices
            .binary_search_by(|e| e.model.as_str().cmp(model.as_str()));
        if at.is_err() && tenant.prices.len() >= PRICES_PER_TENANT_MAX {
            return Outcome::Rejected(Rejection::bound_reached(Bound::PricesPerTenant, tenant_id));
        }
        tenant.price_version = tenant.price_version.saturating_add(1);
        let entry = PriceEntry {
            model: model.clone(),
            price: *price,
            version: tenant.price_version,
        };
        match at {
            Ok(i) => tenant.prices[i] = entry.clone(),
            Err(i) => tenant.prices.insert(i, entry.clone()),
        }
        let event = AuditEvent::PricePut(entry);
        self.audit
            .append(now_ms, Fact::tenant(tenant_id, request_id, event));
        Outcome::Done
    }

    /// Removes `model`'s entry from the tenant's table, audited.
    pub(super) fn delete_price(
        &mut self,
        now_ms: u64,
        request_id: &RequestId,
        (t, tenant_id): (u32, &TenantId),
        model: &ModelId,
    ) -> Outcome {
        let Some(tenant) = self.tenants.get_mut(t) else {
            return super::commands::unknown_tenant(tenant_id);
        };
        let Ok(i) = tenant
            .prices
            .binary_search_by(|e| e.model.as_str().cmp(model.as_str()))
        else {
            return Outcome::Rejected(Rejection::UnknownPrice {
                tenant: tenant_id.clone(),
                model: model.clone(),
            });
        };
        tenant.prices.remove(i);
        let event = AuditEvent::PriceDelete(model.clone());
        self.audit
            .append(now_ms, Fact::tenant(tenant_id, request_id, event));
        Outcome::Done
    }

    /// The tenant's price table, sorted by model.
    pub fn prices(&self, tenant: &TenantId) -> Result<Vec<PriceEntry>, Rejection> {
        Ok(self.tenant(tenant)?.prices.clone())
    }
}

//! The tenant's price table: what each model costs, so commits and records may carry
//! usage (model and token counts) and the cluster derives the cost.

use tollgate_proto::v1;

use crate::client::Client;
use crate::error::Error;
use crate::types::{new_request_id, Applied};

impl Client {
    /// Sets one model's price in the tenant's table (replacing the model's entry). A tenant
    /// admin sets its own tenant's prices, the admin any tenant's.
    pub async fn put_price(&self, tenant: &str, price: v1::Price) -> Result<Applied, Error> {
        let wire = v1::PutPriceRequest {
            request_id: new_request_id(),
            tenant: tenant.to_owned(),
            price: Some(price),
        };
        let response = self
            .call(|rpc| {
                let wire = wire.clone();
                async move { rpc.admin().put_price(wire).await }
            })
            .await?;
        Ok(Applied::from(response.applied))
    }

    /// Removes a model's entry from the tenant's table.
    pub async fn delete_price(&self, tenant: &str, model: &str) -> Result<Applied, Error> {
        let wire = v1::DeletePriceRequest {
            request_id: new_request_id(),
            tenant: tenant.to_owned(),
            model: model.to_owned(),
        };
        let response = self
            .call(|rpc| {
                let wire = wire.clone();
                async move { rpc.admin().delete_price(wire).await }
            })
            .await?;
        Ok(Applied::from(response.applied))
    }

    /// The tenant's price table, sorted by model. Any key of the tenant may read it.
    pub async fn list_prices(&self, tenant: &str) -> Result<Vec<v1::Price>, Error> {
        let wire = v1::ListPricesRequest {
            tenant: tenant.to_owned(),
        };
        let response = self
            .call(|rpc| {
                let wire = wire.clone();
                async move { rpc.admin().list_prices(wire).await }
            })
            .await?;
        Ok(response.prices)
    }
}

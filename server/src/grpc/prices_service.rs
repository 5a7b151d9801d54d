//! The price-table RPCs of `tollgate.v1.Admin`: put, delete, list. A tenant admin manages
//! its own tenant's prices, the admin every tenant's; every key of a tenant may read them
//! (workers price their estimates with them).

use tollgate_proto::v1 as pb;
use tonic::Status;

use super::call::{propose, read_linearizable, rejection_status};
use super::convert;
use crate::auth::Caller;
use crate::node::Node;
use tollgate_ledger::Command;

pub(super) async fn put_price(
    node: &Node,
    caller: &Caller,
    request: pb::PutPriceRequest,
) -> Result<pb::AdminResponse, Status> {
    let tenant = convert::tenant(&request.tenant)?;
    caller.for_tenant_admin(&tenant)?;
    let (model, price) = convert::price(request.price)?;
    let command = Command::PutPrice {
        request_id: convert::request_id(&request.request_id)?,
        tenant,
        model,
        price,
    };
    let result = propose(node, command, "put_price").await?;
    Ok(convert::admin_response(&result))
}

pub(super) async fn delete_price(
    node: &Node,
    caller: &Caller,
    request: pb::DeletePriceRequest,
) -> Result<pb::AdminResponse, Status> {
    let tenant = convert::tenant(&request.tenant)?;
    caller.for_tenant_admin(&tenant)?;
    let command = Command::DeletePrice {
        request_id: convert::request_id(&request.request_id)?,
        tenant,
        model: convert::model(&request.model)?,
    };
    let result = propose(node, command, "delete_price").await?;
    Ok(convert::admin_response(&result))
}

pub(super) async fn list_prices(
    node: &Node,
    caller: &Caller,
    request: pb::ListPricesRequest,
) -> Result<pb::ListPricesResponse, Status> {
    let tenant = convert::tenant(&request.tenant)?;
    caller.for_member(&tenant)?;
    let prices = read_linearizable(node, caller, |applied| {
        applied
            .ledger
            .prices(&tenant)
            .map_err(|r| rejection_status(&r))
    })
    .await?;
    Ok(pb::ListPricesResponse {
        prices: prices.iter().map(convert::price_to_pb).collect(),
    })
}

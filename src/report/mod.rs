//! Run outputs people read: the summary table and charts.

pub mod chart;
pub mod table;

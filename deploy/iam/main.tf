# IRSA role for dumper, bound to the Kubernetes service account in k8s/cronjob.yaml,
# with the least-privilege policy of policy.json. OpenTofu or Terraform.
#
#   tofu init && tofu apply -var cluster_name=prod -var db_resource_id=db-ABC... \
#        -var bucket=my-db-dumps -var region=eu-central-1 -var account_id=123456789012
# Then put the output role_arn into the ServiceAccount's eks.amazonaws.com/role-arn.

variable "cluster_name" { type = string }
variable "region" { type = string }
variable "account_id" { type = string }
variable "db_resource_id" {
  type        = string
  description = "DbiResourceId (instance) or DbClusterResourceId (Aurora), e.g. db-ABCDEFGHIJKL..."
}
variable "db_user" {
  type    = string
  default = "dumper"
}
variable "bucket" { type = string }
variable "prefix" {
  type    = string
  default = "app"
}
variable "kms_key_arn" {
  type    = string
  default = ""
}
variable "namespace" {
  type    = string
  default = "dumper"
}
variable "service_account" {
  type    = string
  default = "dumper"
}

data "aws_eks_cluster" "this" {
  name = var.cluster_name
}

data "aws_iam_openid_connect_provider" "this" {
  url = data.aws_eks_cluster.this.identity[0].oidc[0].issuer
}

module "dumper_irsa_role" {
  source    = "terraform-aws-modules/iam/aws//modules/iam-role-for-service-accounts-eks"
  version   = "~> 5.0"
  role_name = "dumper-${var.cluster_name}"
  oidc_providers = {
    main = {
      provider_arn               = data.aws_iam_openid_connect_provider.this.arn
      namespace_service_accounts = ["${var.namespace}:${var.service_account}"]
    }
  }
}

resource "aws_iam_role_policy" "dumper" {
  name = "dumper"
  role = module.dumper_irsa_role.iam_role_name
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat([
      {
        Sid      = "ConnectAsTheDumperRoleOnly"
        Effect   = "Allow"
        Action   = "rds-db:connect"
        Resource = "arn:aws:rds-db:${var.region}:${var.account_id}:dbuser:${var.db_resource_id}/${var.db_user}"
      },
      {
        Sid       = "ListTheDumpPrefix"
        Effect    = "Allow"
        Action    = ["s3:ListBucket", "s3:ListBucketMultipartUploads"]
        Resource  = "arn:aws:s3:::${var.bucket}"
        Condition = { StringLike = { "s3:prefix" = ["${var.prefix}/", "${var.prefix}/*"] } }
      },
      {
        Sid    = "WriteAndCleanUpDumpObjects"
        Effect = "Allow"
        Action = ["s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts"]
        Resource = "arn:aws:s3:::${var.bucket}/${var.prefix}/*"
      }
      ], var.kms_key_arn == "" ? [] : [
      {
        Sid      = "OnlyWithSseKms"
        Effect   = "Allow"
        Action   = ["kms:GenerateDataKey", "kms:Decrypt"]
        Resource = var.kms_key_arn
      }
    ])
  })
}

output "role_arn" {
  value = module.dumper_irsa_role.iam_role_arn
}

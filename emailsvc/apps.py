from django.apps import AppConfig


class EmailsvcConfig(AppConfig):
    name = "emailsvc"
    verbose_name = "Sending"
